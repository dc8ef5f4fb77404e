"""``film serve``: a local web page (Gradio) to fuse your own pair with your own words, and its API."""

from __future__ import annotations


def register(sub) -> None:
    s = sub.add_parser("serve", help="a local web page (Gradio) to fuse your own pair with your own words, and its API")
    s.add_argument("--checkpoint", default="demo",
                   help="checkpoint path, demo (default: the demo weights of the task chosen on the page), "
                   "demo-IVF/-MIF/-MEF/-MFF (one task's) or random")
    s.add_argument("--backend", default="torch", help="torch (default), jittor, or both (live parity on the page)")
    s.add_argument("--encoder", default=None,
                   help="the BLIP-2 Q-Former text encoder (a folder saved by film text --save-encoder, or a model name "
                   "in the Hugging Face cache); default: film text's, if it loads; 'none': synthetic text features")
    s.add_argument("--captioner", default=None, help="a BLIP captioning model (folder) for the Draft button")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 shares it on your network)")
    s.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    s.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    s.set_defaults(func=run)


def run(args) -> int:
    from film.serve import serve

    serve(args.checkpoint, backend=args.backend, encoder=args.encoder, captioner=args.captioner, host=args.host,
          port=args.port, device=args.device)
    return 0
