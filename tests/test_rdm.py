"""RDMs and RSA: equality with scipy, invariances, guards, rsatoolbox."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

from repanalysis.errors import UserError
from repanalysis.measures import compare_rdms, rdm, rsa


def data(n=40, d=6, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)) * 3.0 + 10.0


@pytest.mark.parametrize("metric", ["euclidean", "correlation"])
def test_rdm_equals_scipy_pdist(metric):
    x = data()
    d = rdm(x, metric)
    assert d.dtype == np.float64 and d.shape == (40, 40)
    assert np.array_equal(d, d.T) and np.all(np.diag(d) == 0)
    assert np.allclose(d, squareform(pdist(x, metric)), rtol=1e-12, atol=1e-14)


def test_euclidean_rdm_is_exact_for_nearly_coincident_samples():
    x = data(n=10)
    x[3] = x[2] + 1e-9                    # the Gram formula alone would lose all digits here
    x[7] = x[5]
    ref = squareform(pdist(x))
    d = rdm(x, "euclidean")
    assert d[2, 3] == pytest.approx(ref[2, 3], rel=1e-6)
    assert d[5, 7] == 0.0
    assert np.allclose(d, ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("compare", ["spearman", "pearson"])
def test_rsa_of_itself_is_one_and_invariances(compare):
    g = np.random.default_rng(1)
    x = data(seed=2)
    assert rsa(x, x, compare=compare) == pytest.approx(1.0, abs=1e-12)
    # euclidean RDMs: rotations, translations and isotropic scaling of feature space
    q, _ = np.linalg.qr(g.standard_normal((6, 6)))
    assert rsa(x, 2.0 * x @ q + 5.0, metric="euclidean", compare=compare) == pytest.approx(1, abs=1e-12)
    # correlation RDMs: per-sample positive scaling and shifts, feature permutations
    a = g.uniform(0.5, 2.0, size=(40, 1))
    b = g.standard_normal((40, 1))
    perm = g.permutation(6)
    y = a * x[:, perm] + b
    assert rsa(x, y, metric="correlation", compare=compare) == pytest.approx(1.0, abs=1e-12)
    # but not a generic linear map
    m = g.standard_normal((6, 6))
    assert rsa(x, x @ m, compare=compare) < 0.99


def test_spearman_is_invariant_to_monotone_transforms_pearson_is_not():
    d = rdm(data(seed=3), "euclidean")
    assert compare_rdms(d, d ** 3 + 1.0) == pytest.approx(1.0, abs=1e-12)
    assert compare_rdms(d, d ** 3 + 1.0, compare="pearson") < 0.999
    assert compare_rdms(d, 4.0 * d - 1.0, compare="pearson") == pytest.approx(1.0, abs=1e-12)


def test_rdm_and_rsa_share_one_default_metric():
    x, y = data(seed=8), data(seed=9)
    assert rsa(x, y) == pytest.approx(compare_rdms(rdm(x), rdm(y)), rel=1e-12)
    assert np.array_equal(rdm(x), rdm(x, "correlation"))


def test_rsa_against_scipy_stats():
    from scipy.stats import pearsonr, spearmanr

    x, y = data(seed=4), data(seed=5)
    iu = np.triu_indices(40, 1)
    dx, dy = squareform(pdist(x, "correlation")), squareform(pdist(y, "correlation"))
    assert rsa(x, y) == pytest.approx(spearmanr(dx[iu], dy[iu])[0], rel=1e-10)
    assert rsa(x, y, compare="pearson") == pytest.approx(pearsonr(dx[iu], dy[iu])[0], rel=1e-10)


def test_guards():
    x = data()
    const = x.copy()
    const[5] = 1.0
    with pytest.raises(UserError, match="row 5"):
        rdm(const, "correlation")
    rdm(const, "euclidean")
    with pytest.raises(UserError, match="same number of samples"):
        rsa(x, x[:10])
    with pytest.raises(UserError, match="metric"):
        rdm(x, "cityblock")
    with pytest.raises(UserError, match="all dissimilarities equal"):
        compare_rdms(np.ones((4, 4)) - np.eye(4), rdm(x[:4], "euclidean"))
    bad = x.copy()
    bad[0, 0] = np.inf
    with pytest.raises(UserError, match="probe set"):
        rdm(bad, where="probe set")


def test_against_rsatoolbox():
    rsatoolbox = pytest.importorskip("rsatoolbox")
    x, y = data(seed=6), data(seed=7)
    dsx = rsatoolbox.data.Dataset(x)
    dsy = rsatoolbox.data.Dataset(y)
    # 'correlation': 1 - Pearson correlation of the samples' patterns, as ours
    rx = rsatoolbox.rdm.calc_rdm(dsx, method="correlation")
    ry = rsatoolbox.rdm.calc_rdm(dsy, method="correlation")
    assert np.allclose(rx.get_matrices()[0], rdm(x, "correlation"), atol=1e-12)
    # 'euclidean' in rsatoolbox is the squared distance divided by the number of features
    re = rsatoolbox.rdm.calc_rdm(dsx, method="euclidean")
    assert np.allclose(re.get_matrices()[0], rdm(x, "euclidean") ** 2 / x.shape[1], rtol=1e-10)
    spear = rsatoolbox.rdm.compare(rx, ry, method="spearman")[0, 0]
    assert spear == pytest.approx(rsa(x, y), rel=1e-10)
    pear = rsatoolbox.rdm.compare(rx, ry, method="corr")[0, 0]
    assert pear == pytest.approx(rsa(x, y, compare="pearson"), rel=1e-10)
