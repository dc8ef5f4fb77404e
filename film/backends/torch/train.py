"""PyTorch side of training: the official recipe (Adam, StepLR, Fusionloss) and official checkpoints."""

from __future__ import annotations

import contextlib
import functools
import os
from collections import OrderedDict

import torch

from film.backends.torch import ops
from film.backends.torch.core import (
    build_model,
    input_format,
    resolve_device,
    resolve_recompute,
    set_fast,
    state_dict_numpy,
)
from film.common import loss as L
from film.common.atomic import atomic_path
from film.common.recompute import set_recompute
from film.common.spec import DATAPARALLEL_PREFIX, OFFICIAL, OFFICIAL_RECIPE
from film.common.training import (
    TrainerBase,
    resume_checkpoint,
    resume_position,
    resume_state_errors,
    steplr_state,
)
from film.errors import FilmError

compute_loss = functools.partial(L.compute_loss, ops)  # (a, b, f, cfg) -> (loss, parts)


class Trainer(TrainerBase):
    ext = ".pth"

    def __init__(self, device: str = "auto", model_cfg=OFFICIAL):
        self.device = resolve_device(device)
        self.model_cfg = model_cfg
        self.model = self.forward = None  # set by build
        self.rank, self.world = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun
            self._init_distributed()

    def _init_distributed(self) -> None:
        """DistributedDataParallel: one process per device; gloo on CPU, nccl on CUDA. --batch-size stays
        the global batch (the official recipe's 2): each rank takes its contiguous share of every batch, and
        DDP's gradient average equals the single-process mean-loss gradient."""
        import torch.distributed as dist

        if self.device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        if not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
            if attempt is None:  # env:// set by hand (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE)
                dist.init_process_group(backend)
            else:  # under torchrun: the keys of this attempt only (see elastic_store)
                rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
                dist.init_process_group(backend, store=elastic_store(rank, world, attempt), rank=rank, world_size=world)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    @staticmethod
    def scalar_writer(run_dir: str):
        """TensorBoard scalars next to log.txt, when the tensorboard package is installed; else None."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard missing (ImportError) or broken: log.txt only
            return None
        return SummaryWriter(run_dir)

    @property
    def device_type(self) -> str:
        return self.device.type

    def share(self, obj):
        """Rank 0's value of ``obj`` on every rank (e.g. the run folder name, which holds a timestamp)."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """End the process group started for torchrun (nothing to do in one process); glibc's heap settings back."""
        self.release_heap()
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def build(self, cfg, init_sd=None):
        torch.manual_seed(cfg.seed)
        self.model = build_model(self.model_cfg, init_sd, str(self.device)).train()
        # channels_last on CPU (2x an NCHW step, gradients as close to float64: docs/training.md), activation
        # recomputation (film.common.recompute) and heap reuse, each as cfg asks (film train's defaults)
        set_fast(self.model, cfg.fast)
        set_recompute(self.model, resolve_recompute(cfg.recompute, self.device.type))
        self.hold_heap(cfg, self.device.type == "cpu")
        self.forward = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # DDP's gradient buckets take each parameter's strides. A channels_last depth-wise (C, 1, 3, 3) or 1x1
            # (O, I, 1, 1) weight has other strides than the gradient autograd makes for it (the same bytes: the
            # size-1 axis), so DDP copied every such gradient ("Grad strides do not match bucket view strides").
            # The gradients are made once in the parameters' own layout and kept (zeroed in place, never freed:
            # _chunk), as views into DDP's buckets: no copy, and the same numbers.
            for p in self.model.parameters():
                p.grad = torch.zeros_like(p)  # preserve_format: the parameter's strides
            devices = [self.device.index] if self.device.type == "cuda" else None
            self.forward = DistributedDataParallel(self.model, device_ids=devices, gradient_as_bucket_view=True)
        self.opt = torch.optim.Adam(
            self.model.parameters(),
            lr=cfg.lr,
            weight_decay=OFFICIAL_RECIPE.weight_decay,
            betas=OFFICIAL_RECIPE.adam_betas,
            eps=OFFICIAL_RECIPE.adam_eps,
        )
        self.recipe = cfg  # lr, step_size, gamma: the shared schedule (training.lr_at) and its saved state

    def set_lr(self, lr: float) -> None:
        for g in self.opt.param_groups:  # the shared schedule (training.lr_at)
            g["lr"] = lr

    def _inputs(self, a, b, t, dtype=None):
        fmt = input_format(self.model)
        a_, b_, t_ = (torch.from_numpy(x).to(self.device, dtype) for x in (a, b, t))
        return a_.contiguous(memory_format=fmt), b_.contiguous(memory_format=fmt), t_

    def _chunk(self, a, b, t, share: float, first: bool, last: bool, cfg, target=None):
        if first:  # under DDP the gradients stay DDP's bucket views, in the parameters' layout (build)
            self.opt.zero_grad(set_to_none=self.world == 1)
        a_, b_, t_ = self._inputs(a, b, t)
        # DDP all-reduces the gradients once, after the last chunk
        sync = contextlib.nullcontext() if last or self.world == 1 else self.forward.no_sync()
        with sync:
            fused = self.forward(a_, b_, t_)
            aim = None if target is None else torch.from_numpy(target).to(self.device).contiguous(
                memory_format=input_format(self.model))
            loss, parts = compute_loss(a_, b_, fused, cfg, aim)
            (loss if share == 1 else loss * share).backward()
        rep = torch.stack([loss.detach(), *(v.detach() for v in parts.values())]) * share
        return rep, tuple(parts), fused.detach().cpu().numpy()

    def _update(self, total) -> list[float]:
        self.opt.step()
        if self.world > 1:  # log the global batch's loss, identical on every rank (the NaN stop agrees too)
            import torch.distributed as dist

            dist.all_reduce(total)
            total /= self.world
        return total.cpu().tolist()

    def gradients(self, a, b, t, cfg) -> tuple[float, dict]:
        """Loss and every parameter's gradient for one batch (no optimizer step); float64 if the model is."""
        a_, b_, t_ = self._inputs(a, b, t, next(self.model.parameters()).dtype)
        self.opt.zero_grad()
        loss, _ = compute_loss(a_, b_, self.model(a_, b_, t_), cfg)
        loss.backward()
        grads = grads_numpy(self.model)
        self.opt.zero_grad()
        return float(loss.item()), grads

    def params_numpy(self) -> dict:
        return dict(state_dict_numpy(self.model))

    def save(self, path: str, epoch: int, step: int, batch: int | None = None) -> None:
        """The official training dict, DataParallel keys (+ ``batch`` mid-epoch); written to a temp file, then
        renamed (rank 0 only)."""
        sd = self.model.state_dict()
        ckpt = {
            "model": OrderedDict((DATAPARALLEL_PREFIX + k, v.contiguous()) for k, v in sd.items()),  # NCHW order
            "optimizer1": self.opt.state_dict(),
            "lr_schedule1": steplr_state(self.recipe, epoch if batch is None else epoch - 1),
            "epoch": epoch,
            "step": step,
            **({} if batch is None else {"batch": batch}),
        }
        if self.rank == 0:
            with atomic_path(path) as tmp:
                torch.save(ckpt, tmp)
        self.barrier()

    def load_resume(self, path: str, cfg) -> dict:
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # unreadable or unsafe
            raise FilmError(
                f"{path}: cannot resume from this checkpoint ({str(e).splitlines()[0][:200]})"
            ) from None
        sd, recipe = resume_checkpoint(
            ck, path, self.model_cfg, cfg, to_numpy=lambda v: v.numpy() if isinstance(v, torch.Tensor) else v
        )
        with resume_state_errors(path):
            self.build(recipe, sd)
            self.opt.load_state_dict(ck["optimizer1"])
        return resume_position(ck, path)


def elastic_store(rank: int, world: int, attempt: str):
    """The rendezvous store of a torchrun worker, its keys prefixed by the restart attempt. After torchrun's elastic
    agent restarted a group, the new workers' gloo rendezvous read the first attempt's keys from the agent's store
    (the same store and key names) and waited for its dead processes for ever (torch 2.13, measured: every
    restart hung in ProcessGroupGloo's constructor); with a prefix per attempt they meet each other."""
    import datetime

    import torch.distributed as dist

    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # the agent serves the store; else rank 0
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=rank == 0 and not agent, timeout=datetime.timedelta(minutes=30),
                          wait_for_workers=False)
    return dist.PrefixStore(f"film/attempt{attempt}", store)


def grads_numpy(model) -> dict:
    return {
        k: p.grad.detach().cpu().numpy().copy() for k, p in model.named_parameters() if p.grad is not None
    }


__all__ = ["Trainer", "compute_loss"]
