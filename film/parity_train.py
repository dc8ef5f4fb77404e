"""``film parity --train``: both backends' training step on the same weights and batches.

Reports the loss (relative difference), every parameter's gradient (max |diff| / max |grad|, next to
torch's own float32 error against a float64 run) and the parameters after a few Adam steps with the
official schedule. Tolerances and their reasons are the ones of tests/test_parity_train.py
(docs/parity.md): the scalar PReLU gradients cancel heavily in float32, and the key bias of each
cross-attention has an identically zero gradient, on which Adam takes sign(rounding noise) * lr steps."""

from __future__ import annotations

import types

import numpy as np

from film.common.data import H5Pairs
from film.common.spec import OFFICIAL, OFFICIAL_RECIPE
from film.common.training import TrainConfig, epoch_batches, load_batch, lr_at
from film.errors import FilmError

LOSS_RTOL = 1e-6
GRAD_RTOL = 1e-4
PARAM_ATOL = 1e-5


def batches(h5: str, batch_size: int, seed: int, n: int) -> list:
    """The first ``n`` batches of the training order (epoch 0, then 1, ...) of ``h5``."""
    data = H5Pairs(h5)
    try:
        if len(data) < batch_size:
            raise FilmError(f"{h5}: {len(data)} samples, fewer than one batch of {batch_size}")
        out, epoch = [], 0
        while len(out) < n:
            out += [load_batch(data, idx)[:3] for idx in epoch_batches(len(data), batch_size, seed, epoch)]
            epoch += 1
        return out[:n]
    finally:
        data.close()


def run_train_parity(state_dict, h5: str, steps: int = 3, lr: float | None = None, batch_size: int = 2,
                     seed: int = 0, device: str = "cpu", model_cfg=OFFICIAL, reference: bool = True) -> dict:
    from film.train import make_trainer

    cfg = types.SimpleNamespace(lr=lr or OFFICIAL_RECIPE.lr, step_size=OFFICIAL_RECIPE.step_size,
                                gamma=OFFICIAL_RECIPE.gamma, seed=seed, grad_weight=OFFICIAL_RECIPE.coeff_grad,
                                ssim_weight=OFFICIAL_RECIPE.ssim_weight)
    data = batches(h5, batch_size, seed, steps)
    if state_dict is None:
        from film.common.init import random_state_dict

        state_dict = random_state_dict(model_cfg, seed=seed)
    trainers = {name: make_trainer(name, device, model_cfg) for name in ("torch", "jittor")}
    for t in trainers.values():
        t._build(cfg, state_dict)
    a, b, t0 = data[0]
    lt, gt = trainers["torch"].gradients(a, b, t0, cfg)
    lj, gj = trainers["jittor"].gradients(a, b, t0, cfg)
    g64 = {}
    if reference:
        ref = make_trainer("torch", device, model_cfg)
        ref._build(cfg, state_dict)
        ref.model.double()
        _, g64 = ref.gradients(a, b, t0, cfg)
    grads = []
    for k in gt:
        scale = max(float(np.abs(g64.get(k, gt[k])).max()), 1e-12)
        rel = float(np.abs(gt[k] - gj[k]).max()) / scale
        own = float(np.abs(gt[k] - g64[k]).max()) / scale if g64 else 0.0
        grads.append((k, rel, own))
    losses = []
    for tr in trainers.values():
        tr.set_lr(lr_at(TrainConfig(h5="", lr=cfg.lr, step_size=cfg.step_size, gamma=cfg.gamma), 0))
    for a, b, t in data:  # the official StepLR moves per 50 epochs: constant over these steps
        losses.append(tuple(tr.step(a, b, t, cfg)[0] for tr in trainers.values()))
    pt, pj = trainers["torch"].params_numpy(), trainers["jittor"].params_numpy()
    e = model_cfg.hidden_dim
    params = []
    for k in pt:
        d = np.abs(pt[k] - pj[k])
        key_bias = 0.0
        if k.endswith("in_proj_bias"):
            key_bias = float(d[e : 2 * e].max())
            d = np.concatenate([d[:e], d[2 * e :]])
        params.append((k, float(d.max()), key_bias))
    return {"loss": (lt, lj), "grads": grads, "step_losses": losses, "params": params, "lr": cfg.lr,
            "steps": steps, "reference": bool(g64)}


def format_train_report(r: dict) -> tuple[str, bool]:
    lt, lj = r["loss"]
    loss_rel = abs(lt - lj) / max(abs(lt), 1e-30)
    lines = [f"loss on the first batch: torch {lt:.9g}  jittor {lj:.9g}  rel diff {loss_rel:.2e} (<= {LOSS_RTOL:g})"]
    grads = sorted(r["grads"], key=lambda x: -x[1])
    bad_g = [g for g in grads if g[1] > GRAD_RTOL + 3 * g[2]]
    n_strict = sum(g[1] <= GRAD_RTOL for g in grads)
    lines.append(f"gradients: {n_strict}/{len(grads)} parameters within {GRAD_RTOL:g} (max|diff| / max|grad|); worst:")
    lines.append(f"  {'parameter':60s} {'rel':>9s} {'torch-f64':>9s}")
    for k, rel, own in grads[:8]:
        flag = "  <-- above tolerance" if (k, rel, own) in bad_g else ""
        lines.append(f"  {k:60s} {rel:9.2e} {own:9.2e}{flag}")
    lines.append(f"after {r['steps']} Adam step(s) (lr {r['lr']:g}, StepLR {OFFICIAL_RECIPE.step_size}/{OFFICIAL_RECIPE.gamma}):")
    for i, (a, b) in enumerate(r["step_losses"]):
        lines.append(f"  step {i + 1}: loss torch {a:.9g}  jittor {b:.9g}  rel diff {abs(a - b) / max(abs(a), 1e-30):.2e}")
    allowance = 2 * r["lr"] * r["steps"]
    params = sorted(r["params"], key=lambda x: -x[1])
    bad_p = [p for p in params if p[1] > PARAM_ATOL or p[2] > allowance]
    lines.append(f"  parameters: worst max_abs {params[0][1]:.2e} ({params[0][0]}), tolerance {PARAM_ATOL:g}; "
                 f"key biases (zero gradient) within {allowance:.1e}: {'yes' if not any(p[2] > allowance for p in params) else 'no'}")
    for k, d, _kb in bad_p[:8]:
        lines.append(f"  {k:60s} {d:9.2e}  <-- above tolerance")
    ok = loss_rel <= LOSS_RTOL and not bad_g and not bad_p
    lines.append("training parity: " + ("OK" if ok else "FAIL"))
    return "\n".join(lines), ok
