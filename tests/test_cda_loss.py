"""The CDA loss against float64 loops written directly from the paper's equations (METHOD.md, docs/cda_loss.md):
eqs. 1-2 (default), appendix E eqs. 3-6 (strategies 1-4), appendix B (KL / JS), and the official code's variants
(reference sign, n binary losses averaged). The loops use scalars and ``math`` only, not the package's helpers."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from autoreg_embed.losses.cda import (
    BOUNDS,
    DIVERGENCE_LOG_PROBS,
    MULTI_NEGATIVE_LOSSES,
    REFERENCE_SIGNS,
    STRATEGIES,
    cda_loss,
    divergence_loss,
    info_nce_from_scores,
    mean_divergence,
    preference_scores,
    sequence_log_probs,
    strategy_loss,
)
from autoreg_embed.losses.cda_log_probs import (
    NEG_GIVEN_NEG,
    NEG_GIVEN_POS,
    NEG_GIVEN_QUERY,
    POS_GIVEN_NEG,
    POS_GIVEN_POS,
    POS_GIVEN_QUERY,
    QUERY_GIVEN_NEG,
    QUERY_GIVEN_POS,
    QUERY_GIVEN_QUERY,
    LogProb,
)

B, T, V = 3, 6, 5
POLICY = (
    POS_GIVEN_QUERY,
    POS_GIVEN_POS,
    NEG_GIVEN_QUERY,
    NEG_GIVEN_NEG,
    NEG_GIVEN_POS,
    POS_GIVEN_NEG,
    QUERY_GIVEN_QUERY,
    QUERY_GIVEN_POS,
    QUERY_GIVEN_NEG,
)
ALL = POLICY + tuple(spec.reference for spec in POLICY)


# ---- the equations, as plain Python loops ----


def g(x: float, bound: str) -> float:
    """The bound: sigma(x), tanh(x) or log sigma(x)."""
    if bound == "sigmoid":
        return 1.0 / (1.0 + math.exp(-x))
    if bound == "tanh":
        return math.tanh(x)
    return -math.log(1.0 + math.exp(-x))


def info_nce(s1: float, s2: list[float], t: float, multi_negative: str) -> float:
    """-log(e^{S1/t} / (e^{S1/t} + sum_i e^{S2_i/t})), or (official) the mean over i of the two-term version."""
    numerator = math.exp(s1 / t)
    if multi_negative == "one_denominator":
        return -math.log(numerator / (numerator + sum(math.exp(s / t) for s in s2)))
    return sum(-math.log(numerator / (numerator + math.exp(s / t))) for s in s2) / len(s2)


def loop_scores(lp: dict, b: int, n: int, strategy: int, o: dict) -> tuple[float, list[float]]:
    """(S1, [S2_1..S2_n]) of example b, from METHOD.md's equations."""
    beta, bound, sign = o["beta"], o["bound"], o["sign"]

    def v(spec: LogProb, i: int | None = None) -> float:
        return lp[spec][b] if i is None or not spec.per_negative else lp[spec][b][i]

    def preference(chosen: float, rejected: float, ref_chosen: float, ref_rejected: float) -> float:
        """beta * [L(chosen) - L(rejected)], L(x) = lp(x) - lp_ref(x) (paper); the official code adds the ref."""
        if sign == "paper":
            return beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
        return beta * ((chosen - rejected) + (ref_chosen - ref_rejected))

    def pref(chosen: LogProb, rejected: LogProb, i: int) -> float:
        return preference(v(chosen, i), v(rejected, i), v(chosen.reference, i), v(rejected.reference, i))

    # eq. 1: lp(d+ | e_{q,I_next}) vs lp(d+ | e_{d+,I_self}); eq. 3: lp(q | e_{q,I_self}) vs lp(q | e_{d+,I_prev})
    default_s1 = beta * abs(v(POS_GIVEN_QUERY) - v(POS_GIVEN_POS))
    query_s1 = beta * abs(v(QUERY_GIVEN_QUERY) - v(QUERY_GIVEN_POS))
    s2 = []
    for i in range(n):
        default_s2 = pref(POS_GIVEN_QUERY, NEG_GIVEN_QUERY, i)  # eq. 2
        query_s2 = pref(QUERY_GIVEN_POS, QUERY_GIVEN_NEG, i)  # eq. 3
        if strategy == 0:
            s2.append(-g(default_s2, bound))
        elif strategy == 1:
            s2.append(-g(query_s2, bound))
        elif strategy == 2:  # eq. 4
            s2.append(-0.5 * g(default_s2, bound) - 0.5 * g(query_s2, bound))
        elif strategy == 3:  # eq. 5: d+ regenerates itself rather than d-_i
            s2.append(-0.5 * g(default_s2, bound) - 0.5 * g(pref(POS_GIVEN_POS, NEG_GIVEN_POS, i), bound))
        else:  # eq. 6: d-_i regenerates itself rather than d+
            s2.append(-0.5 * g(default_s2, bound) - 0.5 * g(pref(NEG_GIVEN_NEG, POS_GIVEN_NEG, i), bound))
    if strategy == 1:
        s1 = -g(query_s1, bound)
    elif strategy == 2:
        s1 = -0.5 * g(query_s1, bound) - 0.5 * g(default_s1, bound)
    else:
        s1 = -g(default_s1, bound)
    return s1, s2


def loop_loss(lp: dict, n: int, strategy: int, o: dict) -> float:
    return sum(info_nce(*loop_scores(lp, b, n, strategy, o), o["temperature"], o["negatives"]) for b in range(B)) / B


def loop_divergence(log_p: list, log_q: list, mask: list, kind: str) -> float:
    """Mean over real positions t of KL(p_t || q_t) or JS(p_t, q_t) for one sequence."""
    values = []
    for t in range(len(log_p)):
        if not mask[t]:
            continue
        p = [math.exp(x) for x in log_p[t]]
        q = [math.exp(x) for x in log_q[t]]
        if kind == "kl":
            values.append(sum(p[v] * math.log(p[v] / q[v]) for v in range(len(p))))
        else:
            m = [(p[v] + q[v]) / 2 for v in range(len(p))]
            kl_pm = sum(p[v] * math.log(p[v] / m[v]) for v in range(len(p)))
            kl_qm = sum(q[v] * math.log(q[v] / m[v]) for v in range(len(q)))
            values.append((kl_pm + kl_qm) / 2)
    return sum(values) / len(values)


# ---- random inputs ----


def random_log_probs(seed: int, n: int, average: bool) -> tuple[dict, dict]:
    """Every log-prob of every strategy from random per-token log-probs with padding (NaN there): reduced by
    ``sequence_log_probs`` (tensors, fresh copies) and by a loop (nested lists)."""
    tensors, lists = _random_log_probs(seed, n, average)
    return {spec: t.clone() for spec, t in tensors.items()}, lists


@functools.cache
def _random_log_probs(seed: int, n: int, average: bool) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(seed)
    tensors, lists = {}, {}
    for spec in ALL:
        rows = B * n if spec.per_negative else B
        tokens = -4 * torch.rand(rows, T, generator=gen, dtype=torch.float64)
        lengths = torch.randint(1, T + 1, (rows,), generator=gen)
        mask = (torch.arange(T)[None] < lengths[:, None]).long()
        tokens = tokens.masked_fill(mask == 0, float("nan"))
        reduced = sequence_log_probs(tokens, mask, average)
        per_row = []
        for r in range(rows):
            real = [tokens[r, t].item() for t in range(T) if mask[r, t]]
            per_row.append(sum(real) / len(real) if average else sum(real))
        if spec.per_negative:
            tensors[spec] = reduced.view(B, n)
            lists[spec] = [per_row[b * n : (b + 1) * n] for b in range(B)]
        else:
            tensors[spec], lists[spec] = reduced, per_row
    return tensors, lists


BETAS, TEMPERATURES = (0.1, 0.3, 0.05), (0.05, 0.7, 0.2)


def options(seed: int, bound: str, sign: str, negatives: str = "one_denominator") -> dict:
    return {
        "beta": BETAS[seed],
        "temperature": TEMPERATURES[seed],
        "bound": bound,
        "sign": sign,
        "negatives": negatives,
    }


def kwargs(o: dict) -> dict:
    """``options`` as keyword arguments of the loss functions."""
    named = {"reference_sign": o["sign"], "multi_negative": o["negatives"]}
    return {**named, **{key: o[key] for key in ("beta", "temperature", "bound")}}


# ---- agreement with the loops ----


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("bound", BOUNDS)
@pytest.mark.parametrize("sign", REFERENCE_SIGNS)
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("negatives", MULTI_NEGATIVE_LOSSES)
def test_strategy_loss_matches_the_equations(n, bound, sign, strategy, negatives):
    for seed in range(3):
        for average in (False, True):
            tensors, lists = random_log_probs(seed, n, average)
            o = options(seed, bound, sign, negatives)
            needed = {spec: tensors[spec] for spec in STRATEGIES[strategy].log_probs}
            out = strategy_loss(strategy, needed, **kwargs(o))
            assert out.loss.item() == pytest.approx(loop_loss(lists, n, strategy, o), abs=1e-9, rel=1e-9)
            assert out.per_example.shape == (B,) and out.s2.shape == (B, n)
            for b in range(B):
                s1, s2 = loop_scores(lists, b, n, strategy, o)
                assert out.s1[b].item() == pytest.approx(s1, abs=1e-12)
                assert out.s2[b].tolist() == pytest.approx(s2, abs=1e-12)


def test_each_strategy_reads_exactly_the_log_probs_of_its_equations():
    default = {POS_GIVEN_QUERY, POS_GIVEN_POS, NEG_GIVEN_QUERY, POS_GIVEN_QUERY.reference, NEG_GIVEN_QUERY.reference}
    query = {QUERY_GIVEN_QUERY, QUERY_GIVEN_POS, QUERY_GIVEN_NEG, QUERY_GIVEN_POS.reference}
    query |= {QUERY_GIVEN_NEG.reference}
    extra3 = {NEG_GIVEN_POS, POS_GIVEN_POS.reference, NEG_GIVEN_POS.reference}
    extra4 = {NEG_GIVEN_NEG, POS_GIVEN_NEG, NEG_GIVEN_NEG.reference, POS_GIVEN_NEG.reference}
    expected = {0: default, 1: query, 2: default | query, 3: default | extra3, 4: default | extra4}
    assert {s: set(STRATEGIES[s].log_probs) for s in STRATEGIES} == expected


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sign", REFERENCE_SIGNS)
def test_cda_loss_diagnostics_match_the_equations(seed, sign):
    tensors, lp = random_log_probs(seed, 3, average=False)
    o = options(seed, "sigmoid", sign)
    args = [POS_GIVEN_QUERY, POS_GIVEN_POS, NEG_GIVEN_QUERY, POS_GIVEN_QUERY.reference, NEG_GIVEN_QUERY.reference]
    out = cda_loss(*(tensors[spec] for spec in args), **kwargs(o))
    assert out.loss.item() == pytest.approx(loop_loss(lp, 3, 0, o), abs=1e-12)
    for b in range(B):
        gap = abs(lp[POS_GIVEN_QUERY][b] - lp[POS_GIVEN_POS][b])
        assert out.alignment_gap[b].item() == pytest.approx(gap, abs=1e-9)
        for i in range(3):  # always the DPO margin, whatever the reference sign
            dpo = (lp[POS_GIVEN_QUERY][b] - lp[POS_GIVEN_QUERY.reference][b]) - (
                lp[NEG_GIVEN_QUERY][b][i] - lp[NEG_GIVEN_QUERY.reference][b][i]
            )
            assert out.reward_margins[b, i].item() == pytest.approx(o["beta"] * dpo, abs=1e-9)


def test_one_denominator_and_mean_of_binary_agree_for_one_negative_only():
    tensors, _ = random_log_probs(0, 1, average=False)
    joint = strategy_loss(0, tensors, multi_negative="one_denominator").per_example
    binary = strategy_loss(0, tensors, multi_negative="mean_of_binary").per_example
    torch.testing.assert_close(joint, binary, rtol=0, atol=1e-12)
    tensors, _ = random_log_probs(0, 3, average=False)
    joint = strategy_loss(0, tensors, multi_negative="one_denominator").per_example
    binary = strategy_loss(0, tensors, multi_negative="mean_of_binary").per_example
    assert (joint - binary).abs().min() > 0.1  # n terms in one denominator weigh more than their mean


# ---- KL / JS (paper appendix B) ----


def random_distributions(seed: int, n: int) -> tuple[dict, dict]:
    """(B[, n], T, V) log-distributions and masks of DIVERGENCE_LOG_PROBS; d+ / d-_i pairs share their mask."""
    gen = torch.Generator().manual_seed(seed)
    lengths = {"pos": torch.tensor([T, 2, 4]), "neg": torch.randint(1, T + 1, (B, n), generator=gen)}
    distributions = {}
    for spec in DIVERGENCE_LOG_PROBS:
        shape = (B, n, T, V) if spec.per_negative else (B, T, V)
        log_dist = torch.randn(shape, generator=gen, dtype=torch.float64).mul(2).log_softmax(-1)
        mask = (torch.arange(T) < lengths[spec.target][..., None]).long()
        distributions[spec] = (log_dist, mask)
    return distributions, {spec: (d.tolist(), m.tolist()) for spec, (d, m) in distributions.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["kl", "js"])
@pytest.mark.parametrize("bound", BOUNDS)
@pytest.mark.parametrize(("n", "negatives"), [(1, "one_denominator"), (3, "one_denominator"), (3, "mean_of_binary")])
def test_divergence_loss_matches_the_equations(seed, kind, bound, n, negatives):
    distributions, lists = random_distributions(seed, n)
    temperature = TEMPERATURES[seed]
    out = divergence_loss(kind, distributions, temperature=temperature, bound=bound, multi_negative=negatives)
    total = 0.0
    for b in range(B):
        # S1 = -g(mean_t D(p(.|d+_<t, e_{d+,I_self}) || p(.|d+_<t, e_{q,I_next}))), no beta
        self_pos, mask = lists[POS_GIVEN_POS][0][b], lists[POS_GIVEN_POS][1][b]
        d_pos = loop_divergence(self_pos, lists[POS_GIVEN_QUERY][0][b], mask, kind)
        s1 = -g(d_pos, bound)
        s2 = []
        for i in range(n):  # S2_i: the same along d-_i's tokens, d-_i's own embedding against the query's
            self_neg, neg_mask = lists[NEG_GIVEN_NEG][0][b][i], lists[NEG_GIVEN_NEG][1][b][i]
            s2.append(-g(loop_divergence(self_neg, lists[NEG_GIVEN_QUERY][0][b][i], neg_mask, kind), bound))
        assert out.alignment_gap[b].item() == pytest.approx(d_pos, abs=1e-12)
        assert out.s1[b].item() == pytest.approx(s1, abs=1e-12)
        assert out.s2[b].tolist() == pytest.approx(s2, abs=1e-12)
        total += info_nce(s1, s2, temperature, negatives)
    assert out.loss.item() == pytest.approx(total / B, abs=1e-9, rel=1e-9)
    assert out.reward_margins is None


def test_kl_runs_from_the_self_conditioned_to_the_query_conditioned_distribution():
    """KL(p(. | e_{d+,I_self}) || p(. | e_{q,I_next})): swapping the two changes the value here; JS is symmetric."""
    distributions, lists = random_distributions(3, 1)
    (self_dist, mask), (query_dist, _) = distributions[POS_GIVEN_POS], distributions[POS_GIVEN_QUERY]
    self_lists, query_lists = lists[POS_GIVEN_POS][0], lists[POS_GIVEN_QUERY][0]
    forward = [loop_divergence(self_lists[b], query_lists[b], mask[b], "kl") for b in range(B)]
    reverse = [loop_divergence(query_lists[b], self_lists[b], mask[b], "kl") for b in range(B)]
    assert min(abs(x - y) for x, y in zip(forward, reverse, strict=True)) > 1e-3
    assert divergence_loss("kl", distributions).alignment_gap.tolist() == pytest.approx(forward, abs=1e-12)
    torch.testing.assert_close(
        mean_divergence(self_dist, query_dist, mask, "js"), mean_divergence(query_dist, self_dist, mask, "js")
    )


# ---- building blocks ----


def test_info_nce_temperature_divides_scores():
    # -log(e^{-5} / (e^{-5} + e^{-9})) = log(1 + e^{-4})
    s1, s2 = torch.tensor([-0.5], dtype=torch.float64), torch.tensor([[-0.9]], dtype=torch.float64)
    loss = info_nce_from_scores(s1, s2, temperature=0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-4.0)), rel=1e-12)


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
    flat = {spec: t.reshape(B) for spec, t in tensors.items()}
    for strategy in STRATEGIES:
        expected = strategy_loss(strategy, tensors).per_example
        torch.testing.assert_close(strategy_loss(strategy, flat).per_example, expected)


def test_sequence_log_probs_sum_and_mean_ignore_padding():
    tokens = torch.tensor([[-1.0, -2.0, float("nan")], [-3.0, float("-inf"), float("-inf")]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert sequence_log_probs(tokens, mask, average=False).tolist() == [-3.0, -3.0]
    assert sequence_log_probs(tokens, mask, average=True).tolist() == [-1.5, -3.0]


def test_log_prob_definitions_are_distinct_and_readable():
    assert len({spec.name for spec in ALL}) == len(ALL)
    assert len({spec.key for spec in POLICY}) == len(POLICY)
    assert str(POS_GIVEN_QUERY) == "lp(d+ | e_{q,I_next})"
    assert str(NEG_GIVEN_NEG.reference) == "lp_ref(d-_i | e_{d-_i,I_self})"
    assert NEG_GIVEN_NEG.reference.key == NEG_GIVEN_NEG.key and NEG_GIVEN_NEG.reference.name != NEG_GIVEN_NEG.name
    assert {spec for spec in POLICY if spec.per_negative} == {
        NEG_GIVEN_QUERY,
        NEG_GIVEN_NEG,
        NEG_GIVEN_POS,
        POS_GIVEN_NEG,
        QUERY_GIVEN_NEG,
    }
    with pytest.raises(ValueError, match=r"LogProb.instruction must be one of \['next', 'self', 'prev'\]"):
        LogProb("pos", "query", "other")


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
@pytest.mark.parametrize("negatives", MULTI_NEGATIVE_LOSSES)
@pytest.mark.parametrize(("index", "direction"), [(0, -1.0), (2, 1.0)])
def test_gradient_signs(bound, sign, negatives, index, direction):
    """Raising lp(d+ | e_q) (index 0) lowers the loss; raising lp(d- | e_q) (index 2) raises it."""
    inputs = default_inputs()
    inputs[index].requires_grad_(True)
    options_ = {"beta": 0.1, "temperature": 0.05, "bound": bound, "reference_sign": sign, "multi_negative": negatives}
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
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_huge_log_probs_give_finite_loss_and_gradients(bound, sign, strategy):
    gen = torch.Generator().manual_seed(0)
    log_probs = {}
    for spec in STRATEGIES[strategy].log_probs:
        shape = (B, 2) if spec.per_negative else (B,)
        log_probs[spec] = (-1e4 * torch.rand(shape, generator=gen)).requires_grad_(True)
    out = strategy_loss(strategy, log_probs, temperature=0.05, bound=bound, reference_sign=sign)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(t.grad).all() for t in log_probs.values())


def test_divergence_gradients_are_finite_for_peaked_distributions():
    logits = torch.full((1, 2, V), -1e4, dtype=torch.float32)
    logits[..., 0] = 0.0
    log_p = logits.log_softmax(-1).requires_grad_(True)
    log_q = torch.randn(1, 2, V).log_softmax(-1).requires_grad_(True)
    for kind in ("kl", "js"):
        mean_divergence(log_p, log_q, torch.ones(1, 2), kind).sum().backward()
    assert torch.isfinite(log_p.grad).all() and torch.isfinite(log_q.grad).all()


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
    with pytest.raises(ValueError, match="Unknown multi_negative 'max'; valid: 'one_denominator', 'mean_of_binary'"):
        cda_loss(*default_inputs(), multi_negative="max")
    logp = torch.zeros(1, 2, V).log_softmax(-1)
    with pytest.raises(ValueError, match="Unknown divergence 'tv'; valid: 'kl', 'js'"):
        mean_divergence(logp, logp, torch.ones(1, 2), "tv")
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
    tensors[QUERY_GIVEN_QUERY][0] = bad
    with pytest.raises(ValueError, match="policy_query_given_query_self contains non-finite values"):
        strategy_loss(1, tensors)


def test_missing_log_probs_are_listed_with_their_meaning():
    tensors, _ = random_log_probs(0, 1, average=False)
    partial = {spec: tensors[spec] for spec in STRATEGIES[0].log_probs}
    with pytest.raises(ValueError, match=r"Strategy 3 needs the log-probs .*policy_neg_given_pos_self = lp\(d-_i"):
        strategy_loss(3, partial)
    distributions, _ = random_distributions(0, 1)
    del distributions[NEG_GIVEN_NEG]
    with pytest.raises(ValueError, match=r"kl similarity needs the distributions of .*policy_neg_given_neg_self"):
        divergence_loss("kl", distributions)


def test_divergence_shape_errors():
    logp = torch.zeros(B, T, V).log_softmax(-1)
    with pytest.raises(ValueError, match=r"target_mask \(3, 5\) must be \(\.\.\., T\)"):
        mean_divergence(logp, logp, torch.ones(B, T - 1), "kl")
