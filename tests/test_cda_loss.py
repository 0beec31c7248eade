"""The CDA loss against float64 loops written directly from the equations of METHOD.md / docs/cda_loss.md."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from autoreg_embed.losses.cda import (
    BOUNDS,
    LOG_PROB_MEANINGS,
    REFERENCE_SIGNS,
    STRATEGY_LOG_PROBS,
    cda_loss,
    divergence_alignment_score,
    info_nce_from_scores,
    preference_scores,
    sequence_log_probs,
    strategy_loss,
)

B, T, V = 3, 6, 5
PER_NEGATIVE = {
    "policy_neg_next",
    "ref_neg_next",
    "policy_query_prev_neg",
    "ref_query_prev_neg",
    "policy_neg_self_pos",
    "ref_neg_self_pos",
    "policy_neg_self",
    "ref_neg_self",
    "policy_pos_self_neg",
    "ref_pos_self_neg",
}
"""The log-probs with one value per negative: (B, n)."""


# ---- the equations, as plain Python loops ----


def score(x: float, bound: str) -> float:
    """S = -sigma(x), -tanh(x) or -log sigma(x)."""
    if bound == "sigmoid":
        return -1.0 / (1.0 + math.exp(-x))
    if bound == "tanh":
        return -math.tanh(x)
    return math.log(1.0 + math.exp(-x))


def preference(pi_pos: float, pi_neg: float, ref_pos: float, ref_neg: float, sign: str) -> float:
    if sign == "paper":
        return (pi_pos - ref_pos) - (pi_neg - ref_neg)
    return (pi_pos - pi_neg) + (ref_pos - ref_neg)


def info_nce(s1: float, s2: list[float], t: float) -> float:
    numerator = math.exp(s1 / t)
    return -math.log(numerator / (numerator + sum(math.exp(s / t) for s in s2)))


def loop_terms(lp: dict, b: int, n: int, names: tuple[str, ...], o: dict) -> tuple[float, list[float]]:
    """(S1, [S2_i]) of example b: S1 aligns lp[chosen] with lp[anchor], S2_i prefers chosen over neg_i."""
    chosen, anchor, neg, ref_chosen, ref_neg = names
    s1 = score(o["beta"] * abs(lp[chosen][b] - lp[anchor][b]), o["bound"])
    s2 = []
    for i in range(n):
        x = preference(lp[chosen][b], lp[neg][b][i], lp[ref_chosen][b], lp[ref_neg][b][i], o["sign"])
        s2.append(score(o["beta"] * x, o["bound"]))
    return s1, s2


def loop_loss(lp: dict, n: int, strategy: int, o: dict, s1_override: list[float] | None = None) -> float:
    total = 0.0
    for b in range(B):
        d_terms = ("policy_pos_next", "policy_pos_self", "policy_neg_next", "ref_pos_next", "ref_neg_next")
        q_terms = ("policy_query_prev_pos", "policy_query_self", "policy_query_prev_neg")
        q_terms += ("ref_query_prev_pos", "ref_query_prev_neg")
        s1, s2 = loop_terms(lp, b, n, d_terms, o)
        if s1_override is not None:
            s1 = s1_override[b]
        if strategy == 3:
            for i in range(n):
                x = preference(
                    lp["policy_pos_self"][b],
                    lp["policy_neg_self_pos"][b][i],
                    lp["ref_pos_self"][b],
                    lp["ref_neg_self_pos"][b][i],
                    o["sign"],
                )
                s2.append(score(o["beta"] * x, o["bound"]))
        if strategy == 4:
            for i in range(n):
                x = preference(
                    lp["policy_neg_self"][b][i],
                    lp["policy_pos_self_neg"][b][i],
                    lp["ref_neg_self"][b][i],
                    lp["ref_pos_self_neg"][b][i],
                    o["sign"],
                )
                s2.append(score(o["beta"] * x, o["bound"]))
        if strategy == 1:
            total += info_nce(*loop_terms(lp, b, n, q_terms, o), o["temperature"])
        elif strategy == 2:
            loss_d = info_nce(s1, s2, o["temperature"])
            loss_q = info_nce(*loop_terms(lp, b, n, q_terms, o), o["temperature"])
            total += (loss_d + loss_q) / 2
        else:
            total += info_nce(s1, s2, o["temperature"])
    return total / B


def loop_divergence(la: list, lb: list, mask: list, kind: str) -> list[float]:
    """Mean over real positions of KL(p_a || p_b) or JS(p_a, p_b), one per row."""
    out = []
    for b in range(len(la)):
        values = []
        for t in range(len(la[b])):
            if not mask[b][t]:
                continue
            pa = [math.exp(v) for v in la[b][t]]
            pb = [math.exp(v) for v in lb[b][t]]
            if kind == "kl":
                values.append(sum(pa[v] * math.log(pa[v] / pb[v]) for v in range(len(pa))))
            else:
                m = [(pa[v] + pb[v]) / 2 for v in range(len(pa))]
                kl_am = sum(pa[v] * math.log(pa[v] / m[v]) for v in range(len(pa)))
                kl_bm = sum(pb[v] * math.log(pb[v] / m[v]) for v in range(len(pb)))
                values.append((kl_am + kl_bm) / 2)
        out.append(sum(values) / len(values))
    return out


# ---- random inputs ----


def random_log_probs(seed: int, n: int, average: bool) -> tuple[dict, dict]:
    """Every LOG_PROB_MEANINGS entry from random per-token log-probs with padding (NaN there): reduced by
    ``sequence_log_probs`` (tensors, fresh copies) and by a loop (nested lists)."""
    tensors, lists = _random_log_probs(seed, n, average)
    return {name: t.clone() for name, t in tensors.items()}, lists


@functools.cache
def _random_log_probs(seed: int, n: int, average: bool) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(seed)
    tensors, lists = {}, {}
    for name in LOG_PROB_MEANINGS:
        rows = B * n if name in PER_NEGATIVE else B
        tokens = -4 * torch.rand(rows, T, generator=gen, dtype=torch.float64)
        lengths = torch.randint(1, T + 1, (rows,), generator=gen)
        mask = (torch.arange(T)[None] < lengths[:, None]).long()
        tokens = tokens.masked_fill(mask == 0, float("nan"))
        reduced = sequence_log_probs(tokens, mask, average)
        per_row = []
        for r in range(rows):
            real = [tokens[r, t].item() for t in range(T) if mask[r, t]]
            per_row.append(sum(real) / len(real) if average else sum(real))
        if name in PER_NEGATIVE:
            tensors[name] = reduced.view(B, n)
            lists[name] = [per_row[b * n : (b + 1) * n] for b in range(B)]
        else:
            tensors[name], lists[name] = reduced, per_row
    return tensors, lists


BETAS, TEMPERATURES = (0.1, 0.3, 0.05), (0.05, 0.7, 0.2)


def options(seed: int, bound: str, sign: str) -> dict:
    return {"beta": BETAS[seed], "temperature": TEMPERATURES[seed], "bound": bound, "sign": sign}


def kwargs(o: dict) -> dict:
    """``options`` as keyword arguments of the loss functions."""
    return {"reference_sign": o["sign"], **{key: o[key] for key in ("beta", "temperature", "bound")}}


# ---- agreement with the loops ----


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("bound", BOUNDS)
@pytest.mark.parametrize("sign", REFERENCE_SIGNS)
@pytest.mark.parametrize("strategy", sorted(STRATEGY_LOG_PROBS))
@pytest.mark.parametrize("average", [False, True])
def test_strategy_loss_matches_loop(n, bound, sign, strategy, average):
    for seed in range(3):
        tensors, lists = random_log_probs(seed, n, average)
        o = options(seed, bound, sign)
        needed = {name: tensors[name] for name in STRATEGY_LOG_PROBS[strategy]}
        out = strategy_loss(strategy, needed, **kwargs(o))
        assert out.loss.item() == pytest.approx(loop_loss(lists, n, strategy, o), abs=1e-6, rel=1e-6)
        assert out.per_example.shape == (B,)
        assert out.s2.shape == (B, 2 * n if strategy in (3, 4) else n)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sign", REFERENCE_SIGNS)
def test_cda_loss_diagnostics_match_loop(seed, sign):
    tensors, lp = random_log_probs(seed, 3, average=False)
    o = options(seed, "sigmoid", sign)
    out = cda_loss(*(tensors[name] for name in STRATEGY_LOG_PROBS[0]), **kwargs(o))
    for b in range(B):
        s1, s2 = loop_terms(lp, b, 3, STRATEGY_LOG_PROBS[0], o)
        assert out.s1[b].item() == pytest.approx(s1, abs=1e-9)
        assert out.s2[b].tolist() == pytest.approx(s2, abs=1e-9)
        gap = abs(lp["policy_pos_next"][b] - lp["policy_pos_self"][b])
        assert out.alignment_gap[b].item() == pytest.approx(gap, abs=1e-9)
        for i in range(3):  # always the DPO margin, whatever the reference sign
            dpo = (lp["policy_pos_next"][b] - lp["ref_pos_next"][b]) - (
                lp["policy_neg_next"][b][i] - lp["ref_neg_next"][b][i]
            )
            assert out.reward_margins[b, i].item() == pytest.approx(o["beta"] * dpo, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["kl", "js"])
@pytest.mark.parametrize("bound", BOUNDS)
def test_divergence_variant_matches_loop(seed, kind, bound):
    gen = torch.Generator().manual_seed(seed)
    logp_a = torch.randn(B, T, V, generator=gen, dtype=torch.float64).mul(2).log_softmax(-1)
    logp_b = torch.randn(B, T, V, generator=gen, dtype=torch.float64).mul(2).log_softmax(-1)
    mask = (torch.arange(T)[None] < torch.tensor([[T], [2], [4]])).long()
    divergence = loop_divergence(logp_a.tolist(), logp_b.tolist(), mask.tolist(), kind)
    o = options(seed, bound, "paper")
    s1 = divergence_alignment_score(logp_a, logp_b, mask, kind, o["beta"], bound)
    assert s1.tolist() == pytest.approx([score(o["beta"] * d, bound) for d in divergence], abs=1e-9)

    tensors, lists = random_log_probs(seed, 1, average=True)
    needed = {name: tensors[name] for name in STRATEGY_LOG_PROBS[0]}
    out = strategy_loss(0, needed, s1_override=s1, **kwargs(o))
    assert out.loss.item() == pytest.approx(loop_loss(lists, 1, 0, o, s1_override=s1.tolist()), abs=1e-6)


def test_kl_is_kl_of_query_conditioning_against_self_conditioning():
    gen = torch.Generator().manual_seed(3)
    logp_a = torch.randn(B, T, V, generator=gen, dtype=torch.float64).mul(3).log_softmax(-1)
    logp_b = torch.randn(B, T, V, generator=gen, dtype=torch.float64).log_softmax(-1)
    mask = torch.ones(B, T)
    kl_ab = loop_divergence(logp_a.tolist(), logp_b.tolist(), mask.tolist(), "kl")
    kl_ba = loop_divergence(logp_b.tolist(), logp_a.tolist(), mask.tolist(), "kl")
    assert min(abs(x - y) for x, y in zip(kl_ab, kl_ba, strict=True)) > 1e-3  # the direction matters here
    got = divergence_alignment_score(logp_a, logp_b, mask, "kl", 1.0, "tanh")
    assert got.tolist() == pytest.approx([-math.tanh(d) for d in kl_ab], abs=1e-9)
    js_ab = divergence_alignment_score(logp_a, logp_b, mask, "js", 1.0, "tanh")
    js_ba = divergence_alignment_score(logp_b, logp_a, mask, "js", 1.0, "tanh")
    torch.testing.assert_close(js_ab, js_ba)


def test_info_nce_temperature_divides_scores():
    # -log(e^{-5} / (e^{-5} + e^{-9})) = log(1 + e^{-4})
    s1, s2 = torch.tensor([-0.5], dtype=torch.float64), torch.tensor([[-0.9]], dtype=torch.float64)
    loss = info_nce_from_scores(s1, s2, temperature=0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-4.0)), rel=1e-6)


def test_reference_signs_differ_exactly_by_twice_the_reference_log_ratio():
    pi_pos, pi_neg = torch.tensor([-10.0, -20.0]).double(), torch.tensor([-12.0, -15.0]).double()
    ref_pos, ref_neg = torch.tensor([-11.0, -19.0]).double(), torch.tensor([-14.0, -16.0]).double()
    args = (pi_pos, pi_neg, ref_pos, ref_neg, 0.1, "tanh")
    paper = torch.atanh(-preference_scores(*args, reference_sign="paper")) / 0.1
    official = torch.atanh(-preference_scores(*args, reference_sign="official")) / 0.1
    torch.testing.assert_close(official - paper, 2 * (ref_pos - ref_neg)[:, None])
    torch.testing.assert_close(paper, ((pi_pos - ref_pos) - (pi_neg - ref_neg))[:, None])


def test_single_negative_may_be_given_as_a_vector():
    tensors, _ = random_log_probs(0, 1, average=False)
    args = [tensors[name] for name in STRATEGY_LOG_PROBS[0]]
    flat = [a.reshape(B) if a.dim() == 2 else a for a in args]
    torch.testing.assert_close(cda_loss(*flat).per_example, cda_loss(*args).per_example)


def test_sequence_log_probs_sum_and_mean_ignore_padding():
    tokens = torch.tensor([[-1.0, -2.0, float("nan")], [-3.0, float("-inf"), float("-inf")]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert sequence_log_probs(tokens, mask, average=False).tolist() == [-3.0, -3.0]
    assert sequence_log_probs(tokens, mask, average=True).tolist() == [-1.5, -3.0]


# ---- gradients and stability ----


def default_inputs(dtype=torch.float64) -> list[torch.Tensor]:
    """lp(d+ | e_q) below lp(d+ | e_{d+}), so that raising it also narrows the alignment gap."""
    return [
        torch.tensor([-30.0, -25.0, -40.0], dtype=dtype),
        torch.tensor([-20.0, -21.0, -35.0], dtype=dtype),
        torch.tensor([[-28.0, -33.0], [-24.0, -30.0], [-41.0, -38.0]], dtype=dtype),
        torch.tensor([-29.0, -27.0, -39.0], dtype=dtype),
        torch.tensor([[-27.0, -31.0], [-26.0, -29.0], [-40.0, -37.0]], dtype=dtype),
    ]


@pytest.mark.parametrize("bound", BOUNDS)
@pytest.mark.parametrize("sign", REFERENCE_SIGNS)
@pytest.mark.parametrize(("index", "direction"), [(0, -1.0), (2, 1.0)])
def test_gradient_signs(bound, sign, index, direction):
    """Raising lp(d+ | e_q) (index 0) lowers the loss; raising lp(d- | e_q) (index 2) raises it."""
    inputs = default_inputs()
    inputs[index].requires_grad_(True)
    options_ = {"beta": 0.1, "temperature": 0.05, "bound": bound, "reference_sign": sign}
    cda_loss(*inputs, **options_).loss.backward()
    grad = inputs[index].grad
    assert (direction * grad > 0).all()

    step = 1e-4
    for position in range(grad.numel()):
        values = []
        for h in (step, -step):
            moved = [t.detach().clone() for t in inputs]
            moved[index].view(-1)[position] += h
            values.append(cda_loss(*moved, **options_).loss.item())
        finite_difference = (values[0] - values[1]) / (2 * step)
        assert direction * finite_difference > 0
        assert finite_difference == pytest.approx(grad.view(-1)[position].item(), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("bound", BOUNDS)
@pytest.mark.parametrize("sign", REFERENCE_SIGNS)
@pytest.mark.parametrize("strategy", sorted(STRATEGY_LOG_PROBS))
def test_huge_log_probs_give_finite_loss_and_gradients(bound, sign, strategy):
    gen = torch.Generator().manual_seed(0)
    log_probs = {}
    for name in STRATEGY_LOG_PROBS[strategy]:
        shape = (B, 2) if name in PER_NEGATIVE else (B,)
        log_probs[name] = (-1e4 * torch.rand(shape, generator=gen)).requires_grad_(True)
    out = strategy_loss(strategy, log_probs, temperature=0.05, bound=bound, reference_sign=sign)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(t.grad).all() for t in log_probs.values())


def test_divergence_gradients_are_finite_for_peaked_distributions():
    logits = torch.full((1, 2, V), -1e4, dtype=torch.float32)
    logits[..., 0] = 0.0
    logp_a = logits.log_softmax(-1).requires_grad_(True)
    logp_b = torch.randn(1, 2, V).log_softmax(-1).requires_grad_(True)
    for kind in ("kl", "js"):
        divergence_alignment_score(logp_a, logp_b, torch.ones(1, 2), kind, 0.1).sum().backward()
    assert torch.isfinite(logp_a.grad).all() and torch.isfinite(logp_b.grad).all()


# ---- errors ----


def test_shape_mismatch_names_the_arguments():
    inputs = default_inputs()
    inputs[4] = inputs[4][:, :1]
    expected = r"ref_neg_next has shape \(3, 1\) but policy_neg_next has shape \(3, 2\)"
    with pytest.raises(ValueError, match=expected):
        cda_loss(*inputs)
    inputs = default_inputs()
    inputs[1] = inputs[1][:2]
    expected = r"policy_pos_self has shape \(2,\) but policy_pos_next has shape \(3,\)"
    with pytest.raises(ValueError, match=expected):
        cda_loss(*inputs)


def test_unknown_option_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown bound 'relu'; valid: 'sigmoid', 'tanh', 'log_sigmoid'"):
        cda_loss(*default_inputs(), bound="relu")
    with pytest.raises(ValueError, match="Unknown reference_sign 'dpo'; valid: 'paper', 'official'"):
        cda_loss(*default_inputs(), reference_sign="dpo")
    logp = torch.zeros(1, 2, V).log_softmax(-1)
    with pytest.raises(ValueError, match="Unknown divergence 'tv'; valid: 'kl', 'js'"):
        divergence_alignment_score(logp, logp, torch.ones(1, 2), "tv", 0.1)
    with pytest.raises(ValueError, match="Unknown strategy 5; valid: 0, 1, 2, 3, 4"):
        strategy_loss(5, {})


@pytest.mark.parametrize("temperature", [0.0, -0.05])
def test_temperature_must_be_positive(temperature):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        cda_loss(*default_inputs(), temperature=temperature)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_named(bad):
    inputs = default_inputs()
    inputs[3][1] = bad
    with pytest.raises(ValueError, match="ref_pos_next contains non-finite values"):
        cda_loss(*inputs)
    tensors, _ = random_log_probs(0, 1, average=False)
    tensors["policy_query_self"][0] = bad
    with pytest.raises(ValueError, match="policy_query_self contains non-finite values"):
        strategy_loss(1, tensors)


def test_strategy_errors():
    tensors, _ = random_log_probs(0, 1, average=False)
    partial = {name: tensors[name] for name in STRATEGY_LOG_PROBS[0]}
    expected = r"Strategy 3 needs log-probs \['policy_neg_self_pos', 'ref_pos_self', 'ref_neg_self_pos'\]"
    with pytest.raises(ValueError, match=expected):
        strategy_loss(3, partial)
    with pytest.raises(ValueError, match="s1_override applies to the d\\+ alignment term"):
        strategy_loss(1, tensors, s1_override=torch.zeros(B))


def test_divergence_shape_errors():
    logp = torch.zeros(B, T, V).log_softmax(-1)
    with pytest.raises(ValueError, match=r"target_mask \(3, 5\) must be \(B, T\)"):
        divergence_alignment_score(logp, logp, torch.ones(B, T - 1), "kl", 0.1)


def test_every_strategy_name_is_documented_and_negatives_are_the_names_with_neg():
    assert {name for names in STRATEGY_LOG_PROBS.values() for name in names} == set(LOG_PROB_MEANINGS)
    assert {name for name in LOG_PROB_MEANINGS if "neg" in name} == PER_NEGATIVE
