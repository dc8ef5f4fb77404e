"""Jittor side of training: the official recipe with torch's Adam arithmetic, checkpoints as jt.save writes them."""

from __future__ import annotations

import functools
import math

import numpy as np

from film.backends.jittor import ops
from film.backends.jittor._jt import jt
from film.backends.jittor.backend import build_model, resolve_device
from film.common import loss as L
from film.common.safeio import read_jittor_pkl, write_jittor_pkl
from film.common.spec import OFFICIAL, OFFICIAL_RECIPE, param_schema
from film.common.training import TrainerBase, resume_checkpoint, resume_state_errors, steplr_state
from film.errors import FilmError

compute_loss = functools.partial(L.compute_loss, ops)  # (a, b, f, cfg) -> (loss, parts)


class TorchAdam(jt.optim.Adam):
    """torch.optim.Adam's update (eps added after the bias-corrected sqrt), which jt.optim.Adam differs from."""

    def step(self, loss=None, retain_graph=False):
        self.pre_step(loss, retain_graph)
        n = float(self.n_step)
        for pg in self.param_groups:
            lr = pg.get("lr", self.lr)
            eps = pg.get("eps", self.eps)
            wd = pg.get("weight_decay", self.weight_decay)
            b0, b1 = pg.get("betas", self.betas)
            bc1, bc2 = 1 - b0**n, 1 - b1**n
            for p, g, v, m in zip(pg["params"], pg["grads"], pg["values"], pg["m"]):
                if p.is_stop_grad():
                    continue
                if wd:
                    g = g + p * wd
                m.update(b0 * m + (1 - b0) * g)
                v.update(b1 * v + (1 - b1) * g * g)
                p.update(p - (lr / bc1) * m / (jt.sqrt(v) / math.sqrt(bc2) + eps))
        self.post_step()


class Trainer(TrainerBase):
    ext = ".pkl"

    def __init__(self, device: str = "auto", model_cfg=OFFICIAL):
        resolve_device(device)
        self.device = device
        self.model_cfg = model_cfg
        self.model = None
        # Under mpirun (Jittor's distributed engine) every rank runs the shared loop on its contiguous share
        # of each global batch; TorchAdam's pre_step all-reduces the gradients (mean), which equals the
        # single-process mean-loss gradient because the shares are equal. Rank 0 alone writes.
        self.rank, self.world = (int(jt.rank), int(jt.world_size)) if jt.in_mpi else (0, 1)

    def share(self, obj: str) -> str:
        """Rank 0's string on every rank (the run folder name holds a timestamp)."""
        if self.world == 1:
            return obj
        buf = np.zeros(4096, np.int32)
        data = np.frombuffer(obj.encode("utf-8"), np.uint8)
        if len(data) > len(buf):
            raise FilmError(f"{obj[:80]}...: path too long to share between MPI ranks")
        buf[: len(data)] = data
        got = jt.array(buf).mpi_broadcast(0).numpy().astype(np.uint8)
        return bytes(got).rstrip(b"\0").decode("utf-8")

    def barrier(self) -> None:
        if self.world > 1:
            jt.array([1.0]).mpi_all_reduce("sum").sync()

    @staticmethod
    def scalar_writer(run_dir: str):
        """No TensorBoard writer without torch: the scalars are in log.txt."""
        return None

    def close(self) -> None:
        """MPI is finalised by Jittor at exit."""

    def _params(self):
        own = self.model.state_dict()
        return [own[k] for k in param_schema(self.model_cfg)]

    def build(self, cfg, init_sd=None):
        # the same seed on every rank (Jittor would add 2591 * rank), and rank 0's weights broadcast: the
        # first gradient must already be taken at identical parameters (Jittor's own sync comes after it)
        jt.set_global_seed(cfg.seed, different_seed_for_mpi=False)
        self.model = build_model(self.model_cfg, init_sd, self.device)
        self.model.train()
        if self.world > 1:
            for p in self._params():
                p.assign(p.mpi_broadcast(0))
            jt.sync_all()
        self.opt = TorchAdam(
            self._params(),
            lr=cfg.lr,
            eps=OFFICIAL_RECIPE.adam_eps,
            betas=OFFICIAL_RECIPE.adam_betas,
            weight_decay=OFFICIAL_RECIPE.weight_decay,
        )
        self.recipe = cfg  # lr, step_size, gamma: the shared schedule (training.lr_at) and its saved state

    def set_lr(self, lr: float) -> None:
        self.opt.lr = lr
        for g in self.opt.param_groups:
            g["lr"] = lr

    def step(self, a, b, t, cfg):
        fused = self.model(jt.array(a), jt.array(b), jt.array(t))
        loss, parts = compute_loss(jt.array(a), jt.array(b), fused, cfg)
        self.opt.step(loss)
        report = jt.concat([loss.detach().reshape(1)] + [v.detach().reshape(1) for v in parts.values()])
        if self.world > 1:  # log the global batch's loss, identical on every rank (the NaN stop agrees too)
            report = report.mpi_all_reduce("mean")
        report = report.numpy().tolist()
        return report[0], dict(zip(parts, report[1:])), fused.numpy()

    def gradients(self, a, b, t, cfg) -> tuple[float, dict]:
        """Loss and every parameter's gradient for one batch (no optimizer step)."""
        fused = self.model(jt.array(a), jt.array(b), jt.array(t))
        loss, _ = compute_loss(jt.array(a), jt.array(b), fused, cfg)
        grads = jt.grad(loss, self._params())
        return float(loss.item()), {k: g.numpy() for k, g in zip(param_schema(self.model_cfg), grads)}

    def params_numpy(self) -> dict:
        return {k: p.numpy().copy() for k, p in zip(param_schema(self.model_cfg), self._params())}

    def optimizer_state(self) -> dict:
        """Adam state in torch's optimizer.state_dict() layout (indices in schema order)."""
        pg = self.opt.param_groups[0]
        n = float(self.opt.n_step)
        state = {
            i: {
                "step": np.array(n, dtype=np.float32),
                "exp_avg": m.numpy().copy(),
                "exp_avg_sq": v.numpy().copy(),
            }
            for i, (m, v) in enumerate(zip(pg["m"], pg["values"]))
        }
        group = {
            "lr": float(pg.get("lr", self.opt.lr)),
            "betas": tuple(self.opt.betas),
            "eps": self.opt.eps,
            "weight_decay": self.opt.weight_decay,
            "amsgrad": False,
            "initial_lr": self.recipe.lr,
            "params": list(range(len(pg["m"]))),
        }
        return {"state": state, "param_groups": [group]}

    def save(self, path: str, epoch: int, step: int) -> None:
        """{'model': state_dict, 'optimizer1', 'lr_schedule1', 'epoch', 'step'} as jt.save writes it (atomic)."""
        if self.rank == 0:  # the other ranks hold the same weights and only wait
            write_jittor_pkl(
                path,
                {
                    "model": self.params_numpy(),
                    "optimizer1": self.optimizer_state(),
                    "lr_schedule1": steplr_state(self.recipe, epoch),
                    "epoch": epoch,
                    "step": step,
                },
            )
        self.barrier()

    def load_resume(self, path: str) -> dict:
        ck = read_jittor_pkl(path)
        sd, recipe = resume_checkpoint(ck, path, self.model_cfg)
        with resume_state_errors(path):
            self.build(recipe, sd)
            opt = ck["optimizer1"]
            pg = self.opt.param_groups[0]
            for i, (m, v) in enumerate(zip(pg["m"], pg["values"])):
                for var, key in ((m, "exp_avg"), (v, "exp_avg_sq")):
                    arr = np.asarray(opt["state"][i][key], dtype=np.float32)
                    if arr.shape != tuple(var.shape):  # Jittor's update would not complain
                        raise ValueError(f"state {i} {key} has shape {arr.shape}, expected {tuple(var.shape)}")
                    var.update(jt.array(arr))
            self.opt.n_step = int(float(opt["state"][0]["step"]))
        return {"epoch": int(ck["epoch"]), "step": int(ck["step"])}
