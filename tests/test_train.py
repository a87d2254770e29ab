"""The shared trainer: EMA, early stopping, checkpoints + resume, merged callbacks, the stop
on divergence, seeds that leave the global random state alone, history numbering across
calls, and Ctrl+C leaving a usable model. Tiny networks, a few epochs each."""

from __future__ import annotations

import random
import signal

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from torch import nn

from biodiffuse.models.base import BaseModel
from biodiffuse.train import GenerativeModule, TrainingDivergedError, fit

N, D = 192, 4
BS = 32  # 6 optimiser steps per epoch
_ACC = {"accelerator": "cpu"}  # set from the --accelerator option; always one device


@pytest.fixture(autouse=True)
def _use_accelerator(accelerator):
    _ACC["accelerator"] = accelerator


def _data(n: int = N, seed: int = 0) -> dict[str, torch.Tensor]:
    w = torch.randn(D, 1, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g)
    y = x @ w + 0.1 * torch.randn(n, 1, generator=g)
    return {"x": x, "y": y}


def _net(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, 1))


def _noisy_mse(net: nn.Module, batch: dict[str, torch.Tensor], gen: torch.Generator | None) -> torch.Tensor:
    """Regression with input noise: draws random numbers like a diffusion objective does."""
    x = batch["x"]
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
    return ((net(x + 0.1 * noise) - batch["y"]) ** 2).mean()


def _constant(net: nn.Module, batch: dict[str, torch.Tensor], gen: torch.Generator | None) -> torch.Tensor:
    """A loss that cannot improve (but has a graph, so Lightning can step)."""
    return 0.0 * net(batch["x"]).sum() + 1.0


def _fit(net, objective=_noisy_mse, *, lr=1e-2, val=None, **kw):
    module = GenerativeModule(net, objective, lr=lr)
    kw = {"max_epochs": 3, "batch_size": BS, "accelerator": _ACC["accelerator"], "devices": 1, "early_stopping": False,
          "ema_decay": None, "enable_progress_bar": False, "seed": 0, **kw}
    return fit(module, _data(), val, **kw)


def _params(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().cpu().clone() for p in net.parameters()]


def _equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


class _Recorder(Callback):
    """The raw weights after every optimiser step, and the epochs seen."""

    def __init__(self) -> None:
        self.steps: list[list[torch.Tensor]] = []
        self.epochs = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(_params(pl_module.network))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs += 1


def _manual_ema(steps: list[list[torch.Tensor]], decay: float) -> list[torch.Tensor]:
    avg = [p.clone() for p in steps[0]]  # torch's AveragedModel copies the first update
    for w in steps[1:]:
        avg = [decay * a + (1 - decay) * p for a, p in zip(avg, w)]
    return avg


class _Model(BaseModel):
    """A minimal model: BaseModel plus a network, trained through ``_run_training``."""

    def __init__(self) -> None:
        BaseModel.__init__(self)
        self.network = _net()

    def run(self, objective=_noisy_mse, *, lr=1e-2, **kw):
        kw = {"max_epochs": 3, "batch_size": BS, "accelerator": _ACC["accelerator"], "devices": 1,
              "early_stopping": False, "ema_decay": None, "enable_progress_bar": False, "seed": 0, **kw}
        return self._run_training(objective, _data(), None, lr=lr, weight_decay=0.0, **kw)


# --- EMA -------------------------------------------------------------------------------------------
def test_ema_weights_are_the_average_kept_at_the_end():
    rec_ema, rec_raw = _Recorder(), _Recorder()
    net_ema, net_raw = _net(), _net()
    _fit(net_ema, ema_decay=0.9, callbacks=[rec_ema])
    _fit(net_raw, ema_decay=None, callbacks=[rec_raw])
    assert len(rec_ema.steps) == 3 * N // BS
    # the raw trajectories are the same run (same seed); only the weights kept differ
    assert _equal(rec_ema.steps[-1], rec_raw.steps[-1])
    assert _equal(_params(net_raw), rec_raw.steps[-1])
    assert not _equal(_params(net_ema), _params(net_raw))
    for got, want in zip(_params(net_ema), _manual_ema(rec_ema.steps, 0.9)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# --- early stopping --------------------------------------------------------------------------------
def test_early_stopping_stops_a_run_that_cannot_improve():
    hist = _fit(_net(), _constant, val=_data(64, seed=1), max_epochs=40, early_stopping=True,
                early_stopping_patience=2)
    # epoch 0 sets the best; epochs 1-2 do not improve on it -> stop after epoch 2
    assert list(hist.index) == [0, 1, 2]
    assert {"train_loss", "val_loss"} <= set(hist.columns)


# --- checkpoints and resume ------------------------------------------------------------------------
def test_checkpoint_and_ckpt_path_resume_like_an_uninterrupted_run(tmp_path):
    val = _data(64, seed=1)
    common = dict(val=val, ema_decay=0.9, early_stopping=True, early_stopping_patience=50)
    full = _net()
    hist_full = _fit(full, max_epochs=5, **common)
    assert list(hist_full.index) == [0, 1, 2, 3, 4]

    first = _net()
    _fit(first, max_epochs=3, checkpoint_dir=str(tmp_path), **common)
    assert (tmp_path / "last.ckpt").exists()
    resumed = _net(seed=7)  # its own weights are replaced by the checkpoint's
    hist = _fit(resumed, max_epochs=5, ckpt_path=str(tmp_path / "last.ckpt"), checkpoint_dir=str(tmp_path),
                **common)
    assert list(hist.index) == [3, 4]
    # The data order and the noise of epoch e depend on (seed, e) alone, and the checkpoint
    # holds weights, optimiser, EMA and early-stopping state: the resumed run is the same run.
    assert _equal(_params(resumed), _params(full))
    np.testing.assert_allclose(hist["val_loss"].to_numpy(), hist_full.loc[[3, 4], "val_loss"].to_numpy(), rtol=1e-6)


def test_last_ckpt_is_the_latest_epoch_not_the_best(tmp_path):
    # val_loss never improves after epoch 0: the best checkpoint stays at epoch 0, but
    # last.ckpt must hold epoch 2, so resuming runs epoch 3 only.
    kw = dict(val=_data(64, seed=1), early_stopping=False, checkpoint_dir=str(tmp_path))
    _fit(_net(), _constant, max_epochs=3, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0-step=6.ckpt", "last.ckpt"]
    hist = _fit(_net(), _constant, max_epochs=4, ckpt_path=str(tmp_path / "last.ckpt"), **kw)
    assert list(hist.index) == [3]


# --- callbacks -------------------------------------------------------------------------------------
def test_user_callbacks_are_added_to_the_internal_ones():
    rec = _Recorder()
    net = _net()
    hist = _fit(net, val=_data(64, seed=1), max_epochs=3, ema_decay=0.9, callbacks=[rec])
    assert rec.epochs == 3  # the user's callback ran
    assert list(hist.index) == [0, 1, 2] and hist["val_loss"].notna().all()  # history still there
    for got, want in zip(_params(net), _manual_ema(rec.steps, 0.9)):  # EMA still applied
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_user_callback_of_an_internal_type_replaces_only_that_one():
    rec = _Recorder()
    net = _net()
    # internal EarlyStopping would wait 30 epochs; the user's waits 1; history and EMA stay
    hist = _fit(net, _constant, val=_data(64, seed=1), max_epochs=40, early_stopping=True,
                early_stopping_patience=30, ema_decay=0.9,
                trainer_kwargs={"callbacks": [EarlyStopping(monitor="val_loss", patience=1)]}, callbacks=rec)
    assert list(hist.index) == [0, 1]
    assert rec.epochs == 2


# --- divergence ------------------------------------------------------------------------------------
def test_huge_lr_raises_and_restores_the_model():
    model = _Model()
    before = _params(model.network)
    with pytest.raises(TrainingDivergedError, match="epoch") as err:
        model.run(lr=1e30)
    msg = str(err.value)
    assert "lr" in msg and "precision" in msg and "step" in msg
    assert _equal(_params(model.network), before)
    assert model.is_trained is False and len(model.history) == 0


class _NaNAt:
    """An objective that returns NaN at training call ``k`` (counting from 0)."""

    def __init__(self, k: int) -> None:
        self.k, self.calls = k, 0

    def __call__(self, net, batch, gen):
        loss = _noisy_mse(net, batch, gen)
        if gen is None:  # training
            self.calls += 1
            if self.calls - 1 == self.k:
                return loss * float("nan")
        return loss


def test_nan_loss_names_epoch_step_and_value_and_keeps_previous_training():
    model = _Model()
    model.run(max_epochs=2)
    trained = _params(model.network)
    history = model.history.copy()
    k = N // BS + 2  # the third batch of the second epoch
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step 9 .*nan.*lr=") as err:
        model.run(_NaNAt(k), max_epochs=4)
    assert (err.value.epoch, err.value.step) == (1, k + 1)
    assert _equal(_params(model.network), trained)
    assert model.is_trained is True and model.history.equals(history)


class _Corrupt(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 4:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("inf")


def test_non_finite_weights_after_a_step_raise():
    with pytest.raises(TrainingDivergedError, match="weights became non-finite"):
        _fit(_net(), callbacks=[_Corrupt()])


# --- seeds -----------------------------------------------------------------------------------------
def test_seed_leaves_global_random_state_alone_and_repeats():
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    a, b, c = _net(), _net(), _net()
    _fit(a, seed=3)
    after = random.getstate(), np.random.get_state(), torch.get_rng_state()
    assert after[0] == states[0]
    assert all(np.array_equal(x, y) for x, y in zip(after[1], states[1]))
    assert torch.equal(after[2], states[2])
    _fit(b, seed=3)
    _fit(c, seed=4)
    assert _equal(_params(a), _params(b))
    assert not _equal(_params(a), _params(c))


# --- history across calls --------------------------------------------------------------------------
def test_history_continues_across_calls():
    model = _Model()
    h1 = model.run(max_epochs=3)
    h2 = model.run(max_epochs=2)
    assert list(h1.index) == [0, 1, 2]
    assert list(h2.index) == [3, 4]
    assert list(model.history.index) == [0, 1, 2, 3, 4]
    assert model.history.index.name == "epoch" and model.is_trained


# --- Ctrl+C ----------------------------------------------------------------------------------------
class _InterruptAt(Callback):
    """Raise KeyboardInterrupt at ``epoch``: while Lightning sets up (before it installs its signal
    handlers), at the start of the epoch's training, or in its validation."""

    def __init__(self, epoch: int, where: str) -> None:
        self.epoch, self.where = epoch, where

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.where == "setup":
            raise KeyboardInterrupt

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.where == "train" and trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.where == "val" and trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["setup", "train", "val"])
def test_keyboard_interrupt_leaves_a_usable_model(where):
    # Lightning 2.6 turns KeyboardInterrupt into sys.exit(1); fit returns normally instead
    model = _Model()
    before = _params(model.network)
    rec = _Recorder()
    epoch = 0 if where == "setup" else 2
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl+C raises, as in a notebook
    try:
        with pytest.warns(UserWarning, match=rf"interrupted .* at epoch {epoch} .*ckpt_path"):
            hist = model._run_training(
                _noisy_mse, _data(), _data(64, seed=1), lr=1e-2, weight_decay=0.0, max_epochs=6, batch_size=BS,
                accelerator=_ACC["accelerator"], devices=1, early_stopping=False, ema_decay=0.9,
                enable_progress_bar=False, seed=0, callbacks=[rec, _InterruptAt(epoch, where)],
            )
        # Lightning sets SIGINT to "ignore" and restores it only if it had installed its own
        # handlers (not yet during set-up); fit puts the caller's handler back in every case
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert model.is_trained is True
    assert list(hist.index) == list(range(epoch)) and list(model.history.index) == list(range(epoch))
    # the weights trained so far, as their EMA average (epoch 2's steps too when it stopped in validation)
    assert len(rec.steps) == {"setup": 0, "train": 2, "val": 3}[where] * N // BS
    if where == "setup":
        assert _equal(_params(model.network), before)
    else:
        assert not _equal(_params(model.network), before)
        for got, want in zip(_params(model.network), _manual_ema(rec.steps, 0.9)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # and the model trains on, numbering epochs after the kept ones
    assert list(model.run(max_epochs=1).index) == [epoch]


class _ToyAdversarial:
    """Regression plus a GAN term against a linear critic of (x, y) pairs."""

    def __init__(self) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(5)
            self.adversary = nn.Linear(D + 1, 1)

    def __call__(self, net, batch, gen):  # the validation loss
        return ((net(batch["x"]) - batch["y"]) ** 2).mean()

    def adversarial_losses(self, net, batch, gen):
        bce = nn.functional.binary_cross_entropy_with_logits
        x, y = batch["x"], batch["y"]
        fake = net(x)
        fooled = self.adversary(torch.cat([x, fake], 1))
        net_loss = ((fake - y) ** 2).mean() + bce(fooled, torch.ones_like(fooled))
        real, faked = self.adversary(torch.cat([x, y], 1)), self.adversary(torch.cat([x, fake.detach()], 1))
        return net_loss, 0.5 * (bce(real, torch.ones_like(real)) + bce(faked, torch.zeros_like(faked)))


def test_adversarial_objective_alternates_two_optimisers_like_the_hand_written_step():
    """One full-batch epoch of the shared trainer equals pix2pix's step written out by hand: the
    network's Adam step on its loss, then the critic's on its own (gradients of the network's
    loss wiped from the critic first); validation reads the objective itself."""
    import copy

    net, objective = _net(), _ToyAdversarial()
    ref_net, ref_adv = copy.deepcopy(net), copy.deepcopy(objective.adversary)
    module = GenerativeModule(net, objective, lr=1e-2)
    assert module.adversary is objective.adversary and not module.automatic_optimization
    hist = fit(module, _data(), _data(64, seed=1), max_epochs=1, batch_size=N, accelerator=_ACC["accelerator"],
               devices=1, early_stopping=False, ema_decay=None, enable_progress_bar=False, seed=0)

    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0, betas=(0.5, 0.999)) for m in (ref_net, ref_adv)]
    ref = _ToyAdversarial()
    ref.adversary = ref_adv
    net_loss, adv_loss = ref.adversarial_losses(ref_net, _data(), None)
    opts[0].zero_grad()
    net_loss.backward()
    opts[0].step()
    opts[1].zero_grad()
    adv_loss.backward()
    opts[1].step()
    for a, b in zip(list(module.network.parameters()) + list(module.adversary.parameters()),
                    list(ref_net.parameters()) + list(ref_adv.parameters())):
        torch.testing.assert_close(a.detach().cpu(), b.detach(), rtol=1e-5, atol=1e-6)
    assert hist["train_loss"].iloc[0] == pytest.approx(float(net_loss.detach()), rel=1e-5)
    val = _data(64, seed=1)
    assert hist["val_loss"].iloc[0] == pytest.approx(float(ref(ref_net, val, None)), rel=1e-5)


def test_optimiser_is_fused_adamw_with_the_same_update_as_the_loop():
    """Training's AdamW runs the fused kernel on CPU float weights, and it takes the same step as
    AdamW's per-tensor loop (so models train as before, only faster)."""
    import copy

    net = _net()
    ref = copy.deepcopy(net)
    mse = lambda m, batch, gen: ((m(batch["x"]) - batch["y"]) ** 2).mean()  # noqa: E731
    opt = GenerativeModule(net, mse, lr=1e-2, weight_decay=1e-4).configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True
    loop = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=1e-4, fused=False, foreach=False)
    for _ in range(3):
        for model, o in ((net, opt), (ref, loop)):
            o.zero_grad()
            mse(model, _data(), None).backward()
            o.step()
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_adversary_must_be_a_module():
    objective = _ToyAdversarial()
    objective.adversary = "critic"
    with pytest.raises(TypeError, match="nn.Module"):
        GenerativeModule(_net(), objective)


def test_training_is_quiet_but_for_epoch_lines(capfd):
    """Default output: the device line and a line per block of epochs; no Lightning banner, tip
    or deprecation warning. verbosity="warning" silences training; "debug" lets Lightning talk."""
    import biodiffuse as bd

    before = bd.settings.verbosity
    try:
        _fit(_net(), max_epochs=3, enable_progress_bar=None)
        err = capfd.readouterr().err
        assert "epoch 1/3: train_loss" in err and "epoch 3/3" in err and "val_loss" not in err
        assert "GPU available" not in err and "Tip" not in err and "treespec" not in err
        bd.settings.verbosity = "warning"
        _fit(_net(), max_epochs=2, enable_progress_bar=None)
        assert capfd.readouterr().err == ""
        import logging

        from biodiffuse.train.trainer import quiet_lightning

        lightning_log = logging.getLogger("lightning.pytorch")
        level = lightning_log.level
        bd.settings.verbosity = "info"
        with quiet_lightning():
            assert lightning_log.level == logging.WARNING
        assert lightning_log.level == level
        bd.settings.verbosity = "debug"
        with quiet_lightning():
            assert lightning_log.level == level
        with pytest.raises(ValueError, match="verbosity"):
            bd.settings.verbosity = "loud"
    finally:
        bd.settings.verbosity = before


def test_num_threads_setting_is_applied_for_the_call_and_reported(capfd):
    """Training runs with biodiffuse.settings.num_threads, logs it, and puts torch's count back."""
    import biodiffuse as bd

    seen = []

    class _Threads(Callback):
        def on_train_batch_start(self, *args):
            seen.append(torch.get_num_threads())

    before_setting, before_torch = bd.settings.num_threads, torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        bd.settings.num_threads = 1
        _fit(_net(), max_epochs=1, enable_progress_bar=None, callbacks=[_Threads()])
        assert set(seen) == {1}
        assert torch.get_num_threads() == 2
        assert "1 CPU thread(s): biodiffuse.settings.num_threads=1" in capfd.readouterr().err
        bd.settings.num_threads = "auto"  # never more than torch's own setting, at least one
        assert 1 <= bd.settings.resolved_threads() <= 2
        for bad in (0, -1, 1.5, "many", True):
            with pytest.raises(ValueError, match="num_threads"):
                bd.settings.num_threads = bad
    finally:
        bd.settings.num_threads = before_setting
        torch.set_num_threads(before_torch)


def test_epoch_lines_are_written_at_least_every_interval(capfd):
    """A slow run is never silent for long: with interval=0 every epoch writes a line even when
    the blocks would give one line per run."""
    from biodiffuse.train import EpochLine

    _fit(_net(), max_epochs=4, enable_progress_bar=None, callbacks=[EpochLine(4, lines=1, interval=0.0)])
    err = capfd.readouterr().err
    assert all(f"epoch {e}/4" in err for e in (1, 2, 3, 4))
    _fit(_net(), max_epochs=4, enable_progress_bar=None, callbacks=[EpochLine(4, lines=1, interval=1e9)])
    err = capfd.readouterr().err
    assert "epoch 4/4" in err and not any(f"epoch {e}/4" in err for e in (1, 2, 3))
