"""Run a canvas state's plan: pre-cache known patches, sample new ones token by token.

Each step selects the NCP caches in the window of its patch, then either runs the model over the
patch's known tokens (pre-caching) or samples its tokens autoregressively with a KV cache. A step
is *committed* at once — tokens written, patch marked done, cache added, step counter advanced,
expired caches removed — and only then is ``progress`` called, so an interrupt raised from inside
``progress`` always leaves the state consistent and resumable (a half-sampled patch is simply
sampled again).

Randomness is per patch: patch (f, r, c) draws from its own stream (``common.draws``, on the
model's device unless ``draws="cpu"``) seeded from ``(seed, f, r, c)``, so a run that was interrupted
and resumed gives exactly the tokens of an uninterrupted run. The token loop never waits for the
device: sampling is top-k, softmax and an exponential-race draw, all on the device.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Union

import torch

from ..common.draws import MODEL_DEVICE, Draws, stream_seed
from ..common.errors import BoundlessError
from ..common.progress import Progress, no_progress
from . import closing
from .adc import order_id
from .config import Extents
from .geometry import PatchPos, read_patch, write_patch
from .model import InfinityTransformer, PatchDecoder
from .ncp import ContextItem, NearbyContextPool, PatchCache, peak_pool_size
from .static_decoder import GraphStep, StaticDecoder
from .state import CanvasState, empty_state, plan_fill, plan_outpaint

# Text for every patch ([B, L, C] or [1, L, C]), or a function of the patch position (regional
# prompts); the function may return None only for a model without a text branch.
TextCondition = Union[None, torch.Tensor, Callable[[PatchPos], Optional[torch.Tensor]]]
# Preview hook: (state, position of the patch just finished) -> IMAGE [1, H, W, 3] or None.
PreviewFn = Callable[[CanvasState, PatchPos], Optional[torch.Tensor]]

DEFAULT_MAX_POOL_BYTES = 8 << 30
DECODERS = ("auto", "static", "dynamic")


@dataclasses.dataclass
class RunStats:
    """What a ``run`` did: patches generated / pre-cached, NCP high-water marks, patches chosen among
    candidates (``closed``), wall time."""

    generated: int = 0
    precached: int = 0
    peak_pool: int = 0
    peak_pool_bytes: int = 0
    max_context: int = 0
    closed: int = 0
    seconds: float = 0.0


def patch_seed(seed: int, pos: PatchPos) -> int:
    """A 63-bit seed for one patch, stable across runs, resumes and machines."""
    return stream_seed(seed, *pos)


def sample_token(logits_bv: torch.Tensor, draws: Draws, temperature: float, top_k: int, top_p: float = 1.0,
                 min_p: float = 0.0) -> torch.Tensor:
    """One token per batch row: greedy when temperature <= 0, else sampled at ``temperature`` from the
    codes that pass every cut: the ``top_k`` most likely (0 = all), the fewest most likely whose
    probability reaches ``top_p`` (1 = all), and those at least ``min_p`` × the most likely one's
    probability (0 = all). The most likely code always passes. All on the device, no host sync."""
    if temperature <= 0:
        return logits_bv.argmax(dim=-1)
    logits = logits_bv.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    if min_p > 0:
        probs = probs.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), 0.0)
    if top_p < 1:
        sorted_bv, order_bv = probs.sort(dim=-1, descending=True)
        before_bv = sorted_bv.cumsum(dim=-1) - sorted_bv             # mass of the more likely codes
        drop_sorted_bv = before_bv >= top_p * probs.sum(dim=-1, keepdim=True)
        probs = probs.masked_fill(torch.zeros_like(drop_sorted_bv).scatter(-1, order_bv, drop_sorted_bv), 0.0)
    return draws.categorical(probs)


def edge_tokens(context: list[ContextItem], patch_h: int, patch_w: int) -> torch.Tensor:
    """``[patch_h · patch_w]`` bool in raster order: the tokens of a patch that touch a finished patch of
    the same frame beside it — its first token column when the patch to its left is in the context
    (a finished or pre-cached neighbour, across the 360° seam too), its last column for the one to its
    right, its first / last row for the ones above / below. Previous frames do not count."""
    edge_hw = torch.zeros(patch_h, patch_w, dtype=torch.bool)
    for item in context:
        dw, dh, df = item.offset
        if df != 0 or (dw != 0) == (dh != 0):          # only the four side neighbours of this frame
            continue
        if dh == 0:
            edge_hw[:, 0 if dw < 0 else -1] = True
        else:
            edge_hw[0 if dh < 0 else -1, :] = True
    return edge_hw.flatten()


def token_temperatures(context: list[ContextItem], patch_h: int, patch_w: int, temperature: float,
                       edge_temperature: float) -> list[float]:
    """The sampling temperature of each token of a patch (raster order): ``temperature × edge_temperature``
    on the tokens that touch a finished neighbour (``edge_tokens``), ``temperature`` elsewhere.

    Why: a model is less sure of a patch's edge tokens than of its inside — on the demo world models
    about 0.1 nats more entropy at the first token column, on real token maps and their own canvases
    alike (``bench/seam_profile.py``) — so at one temperature it draws more varied tokens along patch
    edges than inside, and the canvas steps there. Plain Python floats: choosing them syncs nothing."""
    if edge_temperature == 1.0:
        return [temperature] * (patch_h * patch_w)
    edge = edge_tokens(context, patch_h, patch_w).tolist()
    return [temperature * edge_temperature if on_edge else temperature for on_edge in edge]


def _text_for(text: TextCondition, pos: PatchPos) -> Optional[torch.Tensor]:
    return text(pos) if callable(text) else text


def _cache_bytes(model: InfinityTransformer, batch: int) -> int:
    cfg = model.config
    return 2 * cfg.depth * batch * cfg.tokens_per_patch * cfg.dim * model.pos_emb.element_size()


def check_memory(model: InfinityTransformer, state: CanvasState, max_pool_bytes: int) -> int:
    """Refuse a plan whose NCP would outgrow ``max_pool_bytes``; return the peak pool size."""
    plan, peak = state.plan, 0
    for index, phase in enumerate(plan.phases):
        start, end = plan.phase_start(index), plan.phase_start(index) + len(phase.steps)
        if end <= state.step:
            continue
        local = max(state.step - start, 0)
        pool = state.ncp if local > 0 and state.ncp is not None else NearbyContextPool(
            phase.region, state.extents, state.wrap)
        order = [step.pos for step in phase.steps]
        peak = max(peak, peak_pool_size(pool, order, pool.last_uses(order), local))
    need = peak * _cache_bytes(model, state.batch)
    if need > max_pool_bytes:
        raise BoundlessError(
            f"this plan needs up to {peak} cached patches in the NCP ({need / 2**30:.2f} GiB), over the "
            f"{max_pool_bytes / 2**30:.2f} GiB bound. The pool holds about one scan line: scan along the long "
            "side (order 'right' for wide canvases, 'down' for tall ones), lower e_h/e_w, use a smaller batch, "
            "or raise the bound")
    return peak


@dataclasses.dataclass(frozen=True)
class Guidance:
    """Guidance of a generated patch: which rows it runs and how their logits mix.

    Rows come in groups of ``B``: the patch as it is (context and prompt), then, for each scale that
    is not 1, the same patch with one condition taken away — the prompt (``text``: classifier-free
    guidance against the empty prompt) or the neighbours (``neighbours``: no NCP context, and no
    previous-frame shift). Each token is drawn from ``base + Σ (g - 1) · (base - without)``, so one
    scale alone is the usual ``without + g · (base - without)``, every group is fed the drawn token,
    and the patch's cache is the base group's. All groups run as one batch: one decoder, one graph.
    The neighbours' caches are kept once and their keys/values repeated per group (``model``), and
    the group without neighbours, always the last, attends to its own tokens only.
    """

    text: float = 1.0
    neighbours: float = 1.0

    @property
    def scales(self) -> list[float]:
        return [g for g in (self.text, self.neighbours) if g != 1.0]

    @property
    def groups(self) -> int:
        return 1 + len(self.scales)

    def mix(self, logits_nv: torch.Tensor) -> torch.Tensor:
        """``[groups · B, V]`` logits of all rows → ``[B, V]`` guided logits (float32)."""
        if self.groups == 1:
            return logits_nv
        base_bv, *without = logits_nv.float().chunk(self.groups)
        if len(without) == 1:              # the usual form: at g = 0 exactly the other group's logits
            return without[0] + self.scales[0] * (base_bv - without[0])
        mixed_bv = base_bv
        for scale, other_bv in zip(self.scales, without):
            mixed_bv = mixed_bv + (scale - 1.0) * (base_bv - other_bv)
        return mixed_bv

    def context_rows(self, batch: int) -> Optional[int]:
        """How many leading rows of the ``groups · B`` see the NCP context; None when all do."""
        return None if self.neighbours == 1.0 else (self.groups - 1) * batch


def guided_text(guidance: Guidance, text_bld: Optional[torch.Tensor], empty_bld: Optional[torch.Tensor],
                batch: int) -> Optional[torch.Tensor]:
    """The text of each of the ``guidance.groups · B`` rows of a guided patch: the prompt's, and the
    empty prompt's in the text group.

    Every group reads the same neighbours' caches (made under the prompt): text guidance then asks
    what *this patch* should add for the prompt beyond what its neighbours already say, at the cost
    of a bigger batch per patch rather than a second NCP."""
    if guidance.groups == 1:
        return text_bld
    texts = []
    if text_bld is not None:
        texts.append(text_bld.expand(batch, -1, -1))
    if guidance.text != 1.0:
        if empty_bld is None:
            raise BoundlessError("text guidance needs the empty prompt's states (Encode Text makes them); "
                                 "set text_guidance to 1 or encode the prompt with Encode Text")
        if empty_bld.shape[1:] != text_bld.shape[1:]:
            raise BoundlessError(f"the empty prompt's states {tuple(empty_bld.shape)} do not match the prompt's "
                                 f"{tuple(text_bld.shape)}; encode both with the same text encoder")
        texts.append(empty_bld.to(text_bld).expand(batch, -1, -1))
    if guidance.neighbours != 1.0 and text_bld is not None:
        texts.append(text_bld.expand(batch, -1, -1))
    return torch.cat(texts) if texts else None


def _sample_patch(model: InfinityTransformer, context: list[ContextItem], order: int, text, batch: int,
                  draws: Draws, temperatures: list[float], cuts: tuple[int, float, float], use_kv_cache: bool,
                  on_token: Callable[[int], None],
                  static: Optional[tuple[StaticDecoder, GraphStep]] = None,
                  guidance: Guidance = Guidance()) -> tuple[torch.Tensor, PatchCache]:
    """Sample one patch's tokens ``[B, T]`` (token i at ``temperatures[i]``, from the codes that pass
    ``cuts`` = (top_k, top_p, min_p) of ``sample_token``) and return them with the patch's cache.
    Tokens are drawn in the model's scan of ``order`` (``token_scan``) and returned in raster order.

    With guidance ``batch`` is ``groups · B`` rows (text by ``guided_text``; the context's caches hold
    ``B`` rows, seen by the first ``guidance.context_rows(B)``): each token is drawn from
    ``guidance.mix`` of the rows' logits and fed to every group; the cache returned is the base
    group's."""
    t = model.config.tokens_per_patch
    device = model.pos_emb.device
    groups = guidance.groups
    out_b = batch // groups
    context_rows = guidance.context_rows(out_b)
    tokens = torch.empty(out_b, t, dtype=torch.int64, device=device)      # in scan order
    scan = model.scan(order)
    if scan is not None:
        temperatures = [temperatures[i] for i in scan.position_list[:t]]

    def pick(logits_nv: torch.Tensor, i: int) -> torch.Tensor:
        return sample_token(guidance.mix(logits_nv), draws, temperatures[i], *cuts)

    def fed(tokens_b: torch.Tensor) -> torch.Tensor:
        return torch.cat([tokens_b] * groups) if groups > 1 else tokens_b

    def own(cache: PatchCache) -> PatchCache:
        return PatchCache(cache.hidden[:, :out_b]) if groups > 1 else cache

    if static is not None:
        decoder, step = static
        decoder.begin(context, order, text, context_rows)
        step()
        for i in range(t):
            tokens[:, i] = pick(decoder.logits, i)
            decoder.token_b.copy_(fed(tokens[:, i]))
            step()
            if i + 1 < t:
                on_token(i + 1)
        return model.rastered(tokens, order), own(decoder.cache())
    if use_kv_cache:
        decoder = PatchDecoder(model, context, order, text, batch, context_rows)
        logits = decoder.step(None)
        for i in range(t):
            tokens[:, i] = pick(logits, i)
            logits = decoder.step(fed(tokens[:, i]))
            if i + 1 < t:
                on_token(i + 1)
        return model.rastered(tokens, order), own(decoder.cache())
    for i in range(t):
        logits, _ = model(fed(tokens[:, :i]), context, order, text, context_rows)
        tokens[:, i] = pick(logits[:, i], i)
        if i + 1 < t:
            on_token(i + 1)
    _, cache = model(fed(tokens), context, order, text, context_rows)
    return model.rastered(tokens, order), own(cache)


@torch.no_grad()
def run(model: InfinityTransformer, state: CanvasState, *, seed: int = 0, temperature: float = 1.0,
        top_k: int = 0, text: TextCondition = None, progress: Progress = no_progress,
        progress_unit: str = "patch", preview: Optional[PreviewFn] = None, use_kv_cache: bool = True,
        max_pool_bytes: int = DEFAULT_MAX_POOL_BYTES, draws: str = MODEL_DEVICE,
        decoder: str = "auto", guidance: float = 1.0, empty_text: Optional[torch.Tensor] = None,
        neighbour_guidance: float = 1.0, edge_temperature: float = 1.0, top_p: float = 1.0,
        min_p: float = 0.0, close_candidates: int = 1) -> RunStats:
    """Advance ``state`` (in place) through the rest of its plan; return statistics.

    progress_unit: "patch" calls ``progress(done, total, preview)`` once per generated patch;
    "token" once per generated token (the preview is offered with a patch's last token, after
    the patch is committed). ``done``/``total`` count the whole plan, so a resumed run continues
    the count. Clone the state first if the caller's copy must stay unchanged.

    ``decoder``: "auto" (a CUDA graph of ``StaticDecoder`` on a CUDA device, ``PatchDecoder``
    elsewhere), "static" (``StaticDecoder`` run eagerly or as a graph) or "dynamic".

    ``guidance``: classifier-free guidance of the text, with ``empty_text`` (``[1, L, C]``, the empty
    prompt's states, which caption dropout trained as "no text"): 1 samples the model as it is, larger
    values follow the prompt more closely, at twice the batch per generated patch.

    ``neighbour_guidance``: the same contrast between the patch with and without its NCP context:
    above 1 each token leans further toward what the neighbours imply, which is what closes seams
    (BENCHMARKS.md "Neighbour guidance"); one more group of rows per patch. See ``Guidance``.

    ``edge_temperature``: the temperature of the tokens along a finished neighbour is
    ``temperature × edge_temperature`` (``token_temperatures``); below 1 the patch edges are drawn
    more surely, which closes the steps at patch columns at no cost (1 = the same everywhere).

    ``top_p`` / ``min_p``: cut the unlikely tail of each token's distribution (``sample_token``), besides
    ``top_k``; 1 / 0 cut nothing.

    ``close_candidates``: a patch that meets finished patches ahead of it in its scan (the last column
    of a 360° canvas) is drawn this many times in one batch, and the candidate under which those
    patches are most likely is kept (``closing``); 1 draws it once like any other patch.
    """
    if guidance < 0:
        raise BoundlessError(f"text guidance must be >= 0 (1 = off), got {guidance}")
    if neighbour_guidance < 0:
        raise BoundlessError(f"neighbour guidance must be >= 0 (1 = off), got {neighbour_guidance}")
    if not 0 < top_p <= 1:
        raise BoundlessError(f"top_p must lie in (0, 1] (1 = off), got {top_p}")
    if not 0 <= min_p < 1:
        raise BoundlessError(f"min_p must lie in [0, 1) (0 = off), got {min_p}")
    if edge_temperature < 0:
        raise BoundlessError(f"edge temperature must be >= 0 (1 = as inside the patch), got {edge_temperature}")
    if int(close_candidates) != close_candidates or close_candidates < 1:
        raise BoundlessError(f"close_candidates must be a whole number >= 1 (1 = off), got {close_candidates}")
    if guidance != 1.0 and text is None:
        raise BoundlessError("text guidance needs a prompt: connect text, or set text_guidance to 1")
    guide = Guidance(text=guidance, neighbours=neighbour_guidance)
    if progress_unit not in ("patch", "token"):
        raise BoundlessError(f"progress_unit must be 'patch' or 'token', got {progress_unit!r}")
    if decoder not in DECODERS:
        raise BoundlessError(f"decoder must be one of {list(DECODERS)}, got {decoder!r}")
    state.require_model(model)
    peak = check_memory(model, state, max_pool_bytes)
    cfg = model.config
    t = cfg.tokens_per_patch
    flat = state.plan.flat
    scale = t if progress_unit == "token" else 1
    total = state.plan.n_generate * scale
    done_count = sum(step.generate for _, step in flat[:state.step])
    stats = RunStats(peak_pool=peak)
    started = time.perf_counter()
    device = model.pos_emb.device
    use_static = use_kv_cache and (decoder == "static" or (decoder == "auto" and device.type == "cuda"))
    statics: dict[int, tuple[StaticDecoder, GraphStep]] = {}      # one per row count, built when first needed
    last_uses: dict[int, dict] = {}
    while state.step < len(flat):
        phase_index, step = flat[state.step]
        phase = state.plan.phases[phase_index]
        local = state.step - state.plan.phase_start(phase_index)
        if local == 0:
            state.ncp = NearbyContextPool(phase.region, state.extents, state.wrap)
        elif state.ncp is None:
            raise BoundlessError("canvas state is mid-phase but has no NCP; the file is incomplete — re-plan it")
        if phase_index not in last_uses:
            last_uses[phase_index] = state.ncp.last_uses([s.pos for s in phase.steps])
        context = state.ncp.select(step.pos)
        stats.max_context = max(stats.max_context, len(context))
        order = order_id(phase.order)
        text_now = _text_for(text, step.pos)
        if step.generate:
            closes = close_candidates > 1 and bool(closing.finished_ahead(state.ncp, step.pos, phase.order))
            candidates = close_candidates if closes else 1
            patch_draws = Draws(patch_seed(seed, step.pos), device, draws)
            if closes:
                patch_draws = closing.CandidateDraws(patch_draws, patch_seed(seed, step.pos), candidates, device,
                                                     draws)
            base = done_count * scale

            def on_token(i: int) -> None:
                if progress_unit == "token":
                    progress(base + i, total, None)

            batch = candidates * state.batch
            rows = guide.groups * batch
            if closes and text_now is not None and text_now.shape[0] > 1:
                text_now = text_now.repeat(candidates, 1, 1)
            text_now = guided_text(guide, text_now, empty_text, batch)
            if use_static and rows not in statics:
                built = StaticDecoder(model, rows, state.extents.cells * t,
                                      0 if text_now is None else text_now.shape[1])
                statics[rows] = (built, GraphStep(built))
            temperatures = token_temperatures(context, cfg.patch_h, cfg.patch_w, temperature, edge_temperature)
            tokens_bt, cache = _sample_patch(model, context, order, text_now, rows, patch_draws,
                                             temperatures, (top_k, top_p, min_p), use_kv_cache, on_token,
                                             statics.get(rows), guide)
            if closes:
                score_n = closing.successor_log_likelihood(model, state.ncp, state.tokens, step.pos, cache,
                                                           phase.order, lambda pos: _text_for(text, pos))
                chosen_b = closing.best_candidates(score_n, state.batch)
                tokens_bt, cache = tokens_bt[chosen_b], PatchCache(cache.hidden[:, chosen_b])
                stats.closed += 1
        else:
            tokens_bt = read_patch(state.tokens, step.pos, cfg.patch_h, cfg.patch_w)
            _, cache = model(model.scanned(tokens_bt.to(device), order), context, order, text_now)
        # Commit the patch; nothing below calls back into user code before the state is whole.
        if step.generate:
            write_patch(state.tokens, step.pos, tokens_bt.cpu(), cfg.patch_h, cfg.patch_w)
            state.done[step.pos] = True
        state.ncp.add(step.pos, PatchCache(cache.hidden.detach()))
        stats.peak_pool_bytes = max(stats.peak_pool_bytes, state.ncp.nbytes)
        state.step += 1
        state.ncp.remove(local, last_uses[phase_index])
        if state.step == len(flat) or flat[state.step][0] != phase_index:
            state.ncp = None
        if step.generate:
            done_count += 1
            stats.generated += 1
            shown = None if preview is None else (lambda pos=step.pos: preview(state, pos))
            progress(done_count * scale, total, shown)
        else:
            stats.precached += 1
    stats.seconds = time.perf_counter() - started
    return stats


def generate_canvas(model: InfinityTransformer, cols: int, rows: int, *, frames: int = 1, batch: int = 1,
                    order: str = "down", extents: Optional[Extents] = None, wrap: bool = False,
                    **run_options) -> CanvasState:
    """Generate a ``cols × rows``-patch canvas from nothing (or text); returns the finished state."""
    state = plan_fill(empty_state(model, cols, rows, frames, batch, extents, wrap), order)
    run(model, state, **run_options)
    return state


def outpaint(model: InfinityTransformer, state: CanvasState, direction: str, patches: int,
             precache_rings: int = 1, **run_options) -> CanvasState:
    """Extend a state by ``patches`` in ``direction`` and generate them; the input state is untouched."""
    grown = plan_outpaint(state, [(direction, patches)], precache_rings=precache_rings)
    run(model, grown, **run_options)
    return grown
