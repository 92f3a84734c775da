"""Scale-invariant measures give the same number at any finite scale of float64 data."""

import numpy as np
import pytest

from repanalysis.measures import similarity
from repanalysis.measures.rdm import rsa
from repanalysis.measures.spectrum import effective_rank, spectrum

MEASURES = {
    "linear_cka": similarity.linear_cka,
    "linear_cka_debiased": lambda x, y: similarity.linear_cka(x, y, debiased=True),
    "cca": similarity.cca, "svcca": similarity.svcca, "pwcca": similarity.pwcca,
    "procrustes": similarity.procrustes, "rbf_cka": similarity.rbf_cka, "rsa": rsa,
    "effective_rank": lambda x, y: effective_rank(x),
}


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 12))
    return x, x @ rng.standard_normal((12, 9)) + 0.5 * rng.standard_normal((120, 9))


@pytest.mark.parametrize("scale", [1e150, 1e155, 1e-200, 1e300])
@pytest.mark.parametrize("name", MEASURES)
def test_extreme_scales_give_the_same_number(pair, name, scale):
    x, y = pair
    fn = MEASURES[name]
    assert fn(x * scale, y * scale) == pytest.approx(fn(x, y), rel=1e-9)


def test_spectrum_scales_with_the_data(pair):
    x, _ = pair
    np.testing.assert_allclose(spectrum(x * 1e155).values, spectrum(x).values * 1e155, rtol=1e-12)
