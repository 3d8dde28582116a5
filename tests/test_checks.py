"""The value checks of restoregrad_adapter.checks: what check_finite_and_positive accepts and refuses, against
the elementwise definition, with one host read."""

import math

import pytest
import torch

from restoregrad_adapter.checks import check_finite_and_positive, check_std

BAD = [math.nan, math.inf, -math.inf, 0.0, -0.0, -1e-30]


def elementwise(tensor, positive):
    """The definition: every element finite (and > 0)."""
    ok = torch.isfinite(tensor)
    return bool((ok & (tensor > 0) if positive else ok).all())


def accepted(call):
    try:
        call()
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 1, 1001), (1,), ()])
def test_one_bad_value_anywhere_is_found(dtype, shape):
    good = torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(dtype) + 0.1
    assert accepted(lambda: check_std("s", good)) and accepted(lambda: check_finite_and_positive(finite={"x": good}))
    n = good.numel()
    for index in sorted({0, 1, 15, 16, 17, 31, 33, n // 2, n - 2, n - 1} & set(range(n))):
        for bad in BAD:
            x = good.clone()
            x.view(-1)[index] = bad
            assert accepted(lambda: check_std("s", x)) == elementwise(x, True), (index, bad)
            assert accepted(lambda: check_finite_and_positive(finite={"x": -x})) == elementwise(-x, False), (index, bad)


def test_non_contiguous_empty_integer_and_gradient_tensors():
    x = torch.rand(4, 6) + 0.1
    x[1, 4] = math.nan
    assert not accepted(lambda: check_std("s", x.t()))
    assert not accepted(lambda: check_std("s", x[:, 2:]))
    assert accepted(lambda: check_std("s", x[:, :4]))
    assert accepted(lambda: check_std("s", torch.ones(2, 0, 3)))  # nothing to refuse, as torch.all of nothing
    assert accepted(lambda: check_finite_and_positive(finite={"x": torch.empty(0)}))
    assert accepted(lambda: check_std("s", torch.tensor([1, 2, 3])))
    assert not accepted(lambda: check_std("s", torch.tensor([1, 0, 3])))
    assert accepted(lambda: check_std("s", (torch.rand(8) + 0.1).requires_grad_()))


@pytest.mark.parametrize("bad, message", [(0.0, "must be > 0"), (-2.0, "must be > 0"), (math.nan, "non-finite"),
                                          (math.inf, "non-finite"), (-math.inf, "non-finite")])
def test_the_error_names_the_tensor_and_what_is_wrong(bad, message):
    x = torch.rand(3, 5) + 0.1
    x[2, 1] = bad
    with pytest.raises(ValueError, match=f"`prior_std` {'contains' if message == 'non-finite' else message}"):
        check_std("prior_std", x)
    if message == "non-finite":
        with pytest.raises(ValueError, match="`y` contains non-finite values"):
            check_finite_and_positive(finite={"y": x})
    else:
        check_finite_and_positive(finite={"y": x})  # finite: no error


def test_several_tensors_and_conditions_are_read_once():
    """All flags are gathered into one host read; the first failure is named."""
    reads = []
    original = torch.Tensor.__bool__

    def counted(self):
        reads.append(1)
        return original(self)

    good, std = torch.randn(2, 8), torch.rand(2, 8) + 0.1
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "__bool__", counted)
        check_finite_and_positive(finite={"a": good, "b": good}, positive={"s": std},
                                  conditions={"c": (torch.tensor(True), "never")})
        assert len(reads) == 1
        reads.clear()
        check_std("s", std)
        assert len(reads) == 1
    with pytest.raises(ValueError, match="`b` contains non-finite"):
        check_finite_and_positive(finite={"a": good, "b": good / 0}, positive={"s": std})
    with pytest.raises(ValueError, match="the condition"):
        check_finite_and_positive(finite={"a": good}, conditions={"c": (torch.tensor(False), "the condition")})
