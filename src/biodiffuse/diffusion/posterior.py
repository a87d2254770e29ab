"""THE batched sampling loop every model uses.

A model describes one batch of rows (cells, tiles, patients) with a :class:`Batch`: the
denoiser to integrate, its condition for those rows, and optionally values to clamp. The
loop (:func:`sample_rows`) draws the initial noise from **one random stream per row**
(:class:`RowNoise`, the idea of NVlabs edm's ``StackedRandomGenerator``), repeats each row's
condition ``n_samples`` times, runs the sampler, clamps, moves the draws to the CPU and hands
them to a reducer (:class:`Moments` by default: mean and variance per row, optionally the
draws) batch by batch. So memory is flat in the number of rows, and the same seed gives the
same numbers for a row whatever the batch size and whatever other rows are sampled with it.

Samplers are callables ``sampler(denoiser, latents, cond, redraw) -> (draws, diagnostics)``:
:func:`edm_sampler` wraps the EDM Heun sampler; Coherent Denoising's rejection sampler and the
rectified-flow solvers plug into the same place. ``redraw(draw_rows)`` returns fresh latents
for the given draws (rows of ``latents``), from the same per-row streams.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from .._settings import settings
from .edm import check_count, heun_sampler, karras_sigmas, network_evaluations

__all__ = ["row_seeds", "RowNoise", "Batch", "FixedChunks", "Moments", "Recentred", "ONE_STEP", "edm_sampler", "sample_rows"]


def row_seeds(seed: int, keys: Iterable[Any]) -> np.ndarray:
    """One 63-bit seed per row from the user's ``seed`` and a stable key per row.

    The key identifies a row independently of the query it comes in (an ``obs_name``, a
    tile's ``(y, x)`` origin), so a row's random stream does not depend on its position or on
    the other rows. The mapping is a BLAKE2b hash: stable across processes and platforms.

    Parameters
    ----------
    seed
        The user's seed.
    keys
        One stable key per row (converted with ``str``), e.g. ``obs_names`` or tile origins.

    Examples
    --------
    >>> seeds = bd.diffusion.row_seeds(0, adata.obs_names)     # one int64 seed per cell
    >>> a, b = bd.diffusion.row_seeds(0, ["c1", "c2"]), bd.diffusion.row_seeds(0, ["c2"])
    >>> bool(a[1] == b[0])                                      # independent of the other rows
    True
    """
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}.")
    seed = int(seed)
    out = []
    for k in keys:
        digest = hashlib.blake2b(f"{seed}\x1f{k}".encode(), digest_size=8).digest()
        out.append(int.from_bytes(digest, "little") >> 1)
    return np.asarray(out, dtype=np.int64)


class RowNoise:
    """One ``torch.Generator`` per row, on the CPU (so every device gets the same noise).

    Parameters
    ----------
    seeds
        One integer seed per row (see :func:`row_seeds`).

    Examples
    --------
    >>> noise = bd.diffusion.RowNoise(bd.diffusion.row_seeds(0, ["cell_a", "cell_b"]))
    >>> noise.randn([1], n_samples=4, shape=(8,)).shape        # 4 draws from cell_b's own stream
    torch.Size([4, 8])
    """

    def __init__(self, seeds: Sequence[int] | np.ndarray) -> None:
        self.generators = [torch.Generator().manual_seed(int(s)) for s in np.asarray(seeds).ravel()]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, rows: Sequence[int] | np.ndarray, n_samples: int, shape: Sequence[int]) -> torch.Tensor:
        """Standard normal draws of shape ``(len(rows) * n_samples, *shape)``, row-major:
        the ``n_samples`` draws of ``rows[0]`` first, each from that row's own stream."""
        shape = tuple(int(s) for s in shape)
        parts = [torch.randn((n_samples, *shape), generator=self.generators[int(r)]) for r in rows]
        return torch.cat(parts) if parts else torch.empty((0, *shape))


@dataclass
class Batch:
    """What a model hands the loop for one batch of ``B`` rows.

    Parameters
    ----------
    denoiser, cond, clamp_values, clamp_mask
        As the attributes below.

    Attributes
    ----------
    denoiser
        Called as ``denoiser(x, sigma, cond)`` on ``B * n_samples`` draws (or a factory, for
        samplers that need one, e.g. Coherent Denoising's).
    cond
        Condition for the ``B`` rows: a tensor, or lists / tuples / dicts of tensors with
        rows first, or None. The loop repeats every row ``n_samples`` times.
    clamp_values, clamp_mask
        Optional tensors of shape ``(B, *shape)`` (the mask may broadcast): where the mask is
        True the draws are replaced by the values (observed channels stay measured).

    Examples
    --------
    >>> net = bd.diffusion.EDMPrecond(bd.nn.MLPDenoiser(8, cond_dims=(16,)))
    >>> def prepare(rows, device):                     # rows: positions of this batch's rows
    ...     c = torch.as_tensor(features[rows], device=device)            # (B, 16)
    ...     return bd.diffusion.Batch(net, cond=([c], torch.ones(len(rows), 1, device=device)))
    >>> out = bd.diffusion.sample_rows(prepare, len(features), (8,), seeds=seeds,
    ...                                sampler=bd.diffusion.edm_sampler(18))
    """

    denoiser: Any
    cond: Any = None
    clamp_values: torch.Tensor | None = None
    clamp_mask: torch.Tensor | None = None


def _repeat_rows(obj: Any, k: int) -> Any:
    """Repeat every row of every tensor in a (nested) condition ``k`` times."""
    if obj is None or k == 1:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.repeat_interleave(k, dim=0)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_repeat_rows(o, k) for o in obj)
    if isinstance(obj, Mapping):
        return {key: _repeat_rows(v, k) for key, v in obj.items()}
    return obj


def _map_rows(obj: Any, f: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``f`` to every tensor of a (nested) condition."""
    if isinstance(obj, torch.Tensor):
        return f(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_rows(o, f) for o in obj)
    if isinstance(obj, Mapping):
        return {key: _map_rows(v, f) for key, v in obj.items()}
    return obj


class FixedChunks:
    """A denoiser that always runs its network on exactly ``chunk`` draws (the last chunk
    padded by repeating its last draw, the padding cut off).

    Float32 kernels may round differently with the batch shape (about 1e-7), although a row's
    result does not depend on its position inside a batch of a given shape. With every network
    call on the same shape, a row's draws are bit-identical whatever the sampling batch size
    and whatever other rows are sampled with it.

    Parameters
    ----------
    denoiser
        Called as ``denoiser(x, sigma, cond)``; ``cond`` holds per-draw tensors (rows first).
    chunk
        Draws per network call.

    Examples
    --------
    >>> net = bd.diffusion.EDMPrecond(bd.nn.MLPDenoiser(8))
    >>> denoiser = bd.diffusion.FixedChunks(net, chunk=32)     # every network call sees 32 draws
    >>> denoiser(torch.randn(50, 8), torch.full((50,), 1.0)).shape
    torch.Size([50, 8])
    """

    def __init__(self, denoiser: Callable[..., torch.Tensor], chunk: int) -> None:
        if int(chunk) < 1:
            raise ValueError(f"chunk must be a positive integer, got {chunk!r}.")
        self.denoiser, self.chunk = denoiser, int(chunk)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        n, k = x.shape[0], self.chunk
        sigma = sigma.expand(n) if sigma.ndim == 0 else sigma
        out = []
        for start in range(0, n, k):
            m = min(start + k, n) - start

            def take(t: torch.Tensor, start: int = start, m: int = m) -> torch.Tensor:
                part = t[start : start + m]
                return torch.cat([part, part[-1:].expand(k - m, *part.shape[1:])]) if m < k else part

            out.append(self.denoiser(take(x), take(sigma), _map_rows(cond, take))[:m])
        return torch.cat(out)


#: The diagnostic under which a loop sampler returns each draw's one-step draw (the denoiser's
#: first output, at ``sigma_max``); :func:`sample_rows` clamps it like the draws and
#: :class:`Recentred` centres on its mean.
ONE_STEP = "one_step"


def edm_sampler(
    steps: int, sigma_max: float = 80.0, sigma_min: float = 0.002, rho: float = 7.0, solver: str = "heun",
    keep_one_step: bool = False,
) -> Callable:
    """The EDM ODE sampler (:func:`~biodiffuse.diffusion.heun_sampler`) as a loop sampler.

    ``steps`` steps cost ``2 * steps - 1`` network evaluations (Heun) or ``steps`` (Euler);
    ``steps=1`` returns the denoiser's output at ``sigma_max`` (its estimate of the
    conditional mean) with either solver.

    That output is also the first evaluation of every solver, from the same noise. With
    ``keep_one_step`` the sampler returns it as the diagnostic ``"one_step"``
    (:data:`ONE_STEP`): the draw ``edm_sampler(1)`` would give from the same latents, at no
    extra evaluation. :class:`Recentred` centres the draws on its mean.

    Parameters
    ----------
    steps
        Sampler steps (noise levels), at least 1.
    sigma_max, sigma_min, rho
        The Karras schedule (:func:`~biodiffuse.diffusion.karras_sigmas`).
    solver
        ``"heun"``, ``"euler"`` or ``"dpm2m"``.
    keep_one_step
        Also return each draw's one-step draw (diagnostic ``"one_step"``, the draws' shape).

    Examples
    --------
    >>> sampler = bd.diffusion.edm_sampler(18)                 # 35 network evaluations per draw
    >>> out = bd.diffusion.sample_rows(prepare, n_rows, (8,), seeds=seeds, sampler=sampler, n_samples=10)
    >>> mean_only = bd.diffusion.edm_sampler(1)                # the denoiser's conditional-mean estimate
    """
    check_count(steps)
    karras_sigmas(1, sigma_min, sigma_max, rho)  # a bad schedule fails here, not at the first batch
    nfe = network_evaluations(steps, solver)  # and a bad solver

    if not isinstance(keep_one_step, (bool, np.bool_)):
        raise TypeError(f"keep_one_step must be True or False, got {keep_one_step!r}.")

    def sampler(denoiser: Any, latents: torch.Tensor, cond: Any, redraw: Callable) -> tuple[torch.Tensor, dict]:
        first: list[torch.Tensor] = []

        def kept(x: torch.Tensor, sigma: torch.Tensor, c: Any) -> torch.Tensor:
            out = denoiser(x, sigma, c)
            if not first:
                first.append(out)
            return out

        x = heun_sampler(
            kept if keep_one_step else denoiser, latents, cond, steps=int(steps), sigma_min=sigma_min,
            sigma_max=sigma_max, rho=rho, solver=solver,
        )
        diagnostics = {"nfe": torch.full((latents.shape[0],), nfe, dtype=torch.int64)}
        if keep_one_step:
            diagnostics[ONE_STEP] = first[0].to(latents.dtype)
        return x, diagnostics

    sampler.steps = int(steps)  # type: ignore[attr-defined]
    sampler.nfe = nfe  # type: ignore[attr-defined]
    sampler.keeps_one_step = bool(keep_one_step)  # type: ignore[attr-defined]
    return sampler


def point_sampler(denoiser: Any, latents: torch.Tensor, cond: Any, redraw: Callable) -> tuple[torch.Tensor, dict]:
    """A deterministic regression network as a loop sampler: one evaluation at ``x = 0``,
    ``t = 0`` (the latents only give the shape; no noise is used). The point models (GeneFlow's
    ``"mse"``, StainDiffuser's ``"l1"`` / ``"pix2pix"``) are trained with the same inputs.

    Parameters
    ----------
    denoiser
        The regression network, called once as ``denoiser(0, 0, cond)``.
    latents
        ``(n, *shape)``: only their shape, device and dtype are used.
    cond
        The condition of the draws, passed to the network.
    redraw
        Unused (part of the sampler interface).

    Examples
    --------
    >>> out = bd.diffusion.sample_rows(prepare, n_rows, (3, 64, 64), seeds=seeds,
    ...                                sampler=bd.diffusion.point_sampler)   # Batch.denoiser: the regression net
    >>> out["nfe"]                                             # 1 evaluation per draw
    """
    zero = torch.zeros(latents.shape[0], device=latents.device, dtype=latents.dtype)
    out = denoiser(torch.zeros_like(latents), zero, cond)
    return out, {"nfe": torch.ones(latents.shape[0], dtype=torch.int64)}


@dataclass
class Moments:
    """Default reducer: per row, the mean and variance over the draws, in one or more scales.

    The variance is the unbiased sample variance of the draws (``ddof=1``; 0 for a single draw),
    so a Gaussian built from the mean and variance of a few draws is not narrowed by their number.

    Parameters
    ----------
    n
        Number of rows.
    transforms
        ``{name: f}``: ``f(draws, rows)`` maps CPU draws ``(B, n_samples, *shape)`` (float64
        numpy) to the scale reported under ``f"{name}mean"`` / ``f"{name}variance"``. Default
        ``{"": identity}`` gives ``mean`` and ``variance`` in the model's scale.
    keep_draws
        Also keep the draws of the first transform (``draws``: ``(n, n_samples, ...)``).

    Examples
    --------
    >>> reducer = bd.diffusion.Moments(n_rows, transforms={"": lambda d, r: d, "counts_": lambda d, r: np.expm1(d)},
    ...                                keep_draws=True)
    >>> out = bd.diffusion.sample_rows(prepare, n_rows, (8,), seeds=seeds, sampler=sampler,
    ...                                n_samples=10, reducer=reducer)
    >>> out["mean"].shape, out["counts_variance"].shape, out["draws"].shape   # (n_rows, 8) x 2, (n_rows, 10, 8)
    """

    n: int
    transforms: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] | None = None
    keep_draws: bool = False
    out: dict[str, np.ndarray] = field(default_factory=dict)

    def __call__(self, rows: np.ndarray, draws: np.ndarray, diagnostics: dict[str, np.ndarray]) -> None:
        transforms = self.transforms or {"": lambda d, r: d}
        for i, (name, f) in enumerate(transforms.items()):
            v = np.asarray(f(draws, rows), dtype=np.float64)
            self._put(f"{name}mean", rows, v.mean(axis=1))
            self._put(f"{name}variance", rows, v.var(axis=1, ddof=1 if v.shape[1] > 1 else 0))
            if i == 0 and self.keep_draws:
                self._put("draws", rows, v)
        for key, value in diagnostics.items():
            self._put(key, rows, np.asarray(value))

    def _put(self, key: str, rows: np.ndarray, value: np.ndarray) -> None:
        if key not in self.out:
            self.out[key] = np.empty((self.n, *value.shape[1:]), dtype=value.dtype)
        self.out[key][rows] = value

    def result(self) -> dict[str, np.ndarray]:
        return self.out


@dataclass
class Recentred:
    """Reducer wrapper: shift each row's draws so that their mean is the row's centre, then hand
    them to ``reducer``.

    Monte Carlo moment matching: the spread and shape come from the draws, the centre from a
    better estimate of the row's mean than the mean of a few draws: the mean of the row's
    one-step draws (the denoiser's estimate of the conditional mean). By default that is the
    mean of the diagnostic ``"one_step"`` that ``edm_sampler(..., keep_one_step=True)``
    returns with the draws (the first evaluation of the multi-step solve, so it costs
    nothing); the diagnostic is not passed on. ``centre`` gives the centres instead. Clamped
    entries stay clamped (:func:`sample_rows` clamps the one-step draws too).

    Parameters
    ----------
    reducer
        The reducer to feed, e.g. :class:`Moments`.
    centre
        ``(n_rows, *shape)`` in the draws' (model) scale, or None: the mean of each row's
        ``"one_step"`` diagnostic.

    Examples
    --------
    >>> out = bd.diffusion.sample_rows(prepare, n, shape, seeds=seeds, n_samples=10,
    ...                                sampler=bd.diffusion.edm_sampler(5, keep_one_step=True),
    ...                                reducer=bd.diffusion.Recentred(bd.diffusion.Moments(n)))
    """

    reducer: Callable[[np.ndarray, np.ndarray, dict], None]
    centre: np.ndarray | None = None

    def __call__(self, rows: np.ndarray, draws: np.ndarray, diagnostics: dict[str, np.ndarray]) -> None:
        diagnostics = dict(diagnostics)
        one_step = diagnostics.pop(ONE_STEP, None)
        if self.centre is not None:
            centre = np.asarray(self.centre[rows], dtype=np.float64)
        elif one_step is None:
            raise ValueError(
                "Recentred without centre needs the draws' one-step draws: sample with "
                "edm_sampler(..., keep_one_step=True)."
            )
        else:
            centre = np.asarray(one_step, dtype=np.float64).mean(axis=1)
        if centre.shape != (draws.shape[0], *draws.shape[2:]):
            raise ValueError(f"centre rows have shape {centre.shape[1:]}, the draws {draws.shape[2:]}.")
        self.reducer(rows, draws - draws.mean(axis=1, keepdims=True) + centre[:, None], diagnostics)

    def result(self) -> Any:
        return self.reducer.result() if hasattr(self.reducer, "result") else self.reducer


@torch.no_grad()
def sample_rows(
    prepare: Callable[[np.ndarray, torch.device], Batch],
    n_rows: int,
    shape: Sequence[int],
    *,
    seeds: Sequence[int] | np.ndarray,
    sampler: Callable,
    n_samples: int = 1,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    reducer: Callable[[np.ndarray, np.ndarray, dict], None] | None = None,
) -> Any:
    """Sample ``n_samples`` draws for each of ``n_rows`` rows, batch by batch.

    Parameters
    ----------
    prepare
        ``prepare(rows, device) -> Batch`` for an index array of rows (positions in
        ``0..n_rows-1``); everything it returns lives on ``device``.
    n_rows
        Number of rows.
    shape
        Shape of one draw (without the row axis), e.g. ``(C, 1, 1)``, ``(G,)``, ``(C, T, T)``.
    seeds
        One seed per row (see :func:`row_seeds`); the row's initial noise comes from it.
    sampler
        ``sampler(denoiser, latents, cond, redraw) -> (draws, diagnostics)``, e.g.
        :func:`edm_sampler`; diagnostics are per-draw tensors (``B * n_samples`` rows).
    n_samples
        Draws per row.
    batch_size
        Rows per batch (``batch_size * n_samples`` draws go through the network at once).
    device
        Where the network runs; draws come back to the CPU after every batch.
    reducer
        ``reducer(rows, draws, diagnostics)`` with CPU float64 draws ``(B, n_samples, *shape)``
        and diagnostics reshaped to ``(B, n_samples, ...)``. Default: :class:`Moments` with
        the identity transform; its ``result()`` is returned.

    Returns
    -------
    ``reducer.result()`` if the reducer has one, else the reducer.

    Examples
    --------
    >>> def denoiser(x, sigma, cond):                          # toy: the condition is the clean value
    ...     return cond.expand_as(x)
    >>> def prepare(rows, device):
    ...     return bd.diffusion.Batch(denoiser, cond=torch.full((len(rows), 3), 2.0, device=device))
    >>> out = bd.diffusion.sample_rows(prepare, 10, (3,), seeds=bd.diffusion.row_seeds(0, range(10)),
    ...                                sampler=bd.diffusion.edm_sampler(18), n_samples=4, batch_size=4)
    >>> out["mean"].shape, out["variance"].shape
    ((10, 3), (10, 3))
    """
    check_count(n_samples, "n_samples")
    check_count(batch_size, "batch_size")
    if len(seeds) != n_rows:
        raise ValueError(f"Need one seed per row: got {len(seeds)} seeds for {n_rows} rows.")
    n_samples, batch_size = int(n_samples), int(batch_size)
    device = torch.device(device)
    shape = tuple(int(s) for s in shape)
    reducer = Moments(n_rows) if reducer is None else reducer
    noise = RowNoise(seeds)
    with settings.torch_threads():  # biodiffuse.settings.num_threads, put back after
        for start in range(0, n_rows, batch_size):
            rows = np.arange(start, min(start + batch_size, n_rows))
            batch = prepare(rows, device)
            latents = noise.randn(rows, n_samples, shape).to(device)

            def redraw(draw_rows: torch.Tensor, _rows: np.ndarray = rows) -> torch.Tensor:
                """Fresh latents for draws ``draw_rows`` (indices into this batch's draws)."""
                owners = _rows[np.asarray(draw_rows.cpu()) // n_samples]
                return torch.cat([noise.randn([r], 1, shape) for r in owners]).to(device)

            draws, diagnostics = sampler(batch.denoiser, latents, _repeat_rows(batch.cond, n_samples), redraw)
            draws = draws.reshape(len(rows), n_samples, *shape)
            diagnostics = {k: v.reshape(len(rows), n_samples, *v.shape[1:]) for k, v in diagnostics.items()}
            if batch.clamp_mask is not None:
                mask = batch.clamp_mask.to(device)

                def clamp(d: torch.Tensor) -> torch.Tensor:
                    return torch.where(mask[:, None], batch.clamp_values.to(d.dtype)[:, None], d)

                draws = clamp(draws)
                if ONE_STEP in diagnostics:  # draws too: clamped alike
                    diagnostics[ONE_STEP] = clamp(diagnostics[ONE_STEP])
            diag = {k: v.cpu().numpy() for k, v in diagnostics.items()}
            reducer(rows, draws.to(torch.float64).cpu().numpy(), diag)
    return reducer.result() if hasattr(reducer, "result") else reducer
