"""Measures on recorded activations, gradients and weights: arrays in, numbers out (numpy and scipy; nothing
of training is imported, and importing them loads no torch).

Similarity (:mod:`.similarity`): :func:`canonical_correlations`, :func:`cca`,
:func:`svcca`, :func:`pwcca`, :func:`linear_cka`, :func:`rbf_cka`,
:class:`MinibatchCKA` / :func:`minibatch_cka`, :func:`procrustes`,
:func:`procrustes_distance`, :func:`expected_null_cca`.
RDMs (:mod:`.rdm`): :func:`rdm`, :func:`rsa`, :func:`compare_rdms`.
Spectra (:mod:`.spectrum`): :func:`spectrum`, :func:`singular_values`,
:func:`effective_rank`, :func:`stable_rank`, :func:`participation_ratio`,
:func:`numerical_rank`, :func:`spectral_summary`, :func:`weight_spectrum`,
:func:`weight_norms`.
Gradients (:mod:`.gradients`): :func:`gradient_error`.
Streaming (:mod:`.streaming`): :class:`Moments` and ``streaming_*`` helpers
computing the moment-based measures chunk by chunk from HDF5 datasets.
Statistics over seeds (:mod:`.stats`): intervals, p-values and verdicts.

Activations are ``[n_samples, n_features]`` numpy arrays or torch tensors;
every measure works in float64, states its convention in its docstring, and
raises :class:`repanalysis.errors.UserError` or warns with
:class:`RepanalysisWarning` on degenerate input.
"""

from repanalysis.measures._arrays import RepanalysisWarning
from repanalysis.measures.gradients import gradient_error
from repanalysis.measures.rdm import compare_rdms, rdm, rsa
from repanalysis.measures.similarity import (
    MinibatchCKA,
    canonical_correlations,
    cca,
    expected_null_cca,
    linear_cka,
    minibatch_cka,
    procrustes,
    procrustes_distance,
    pwcca,
    rbf_cka,
    svcca,
)
from repanalysis.measures.spectrum import (
    Spectrum,
    effective_rank,
    numerical_rank,
    participation_ratio,
    singular_values,
    spectral_summary,
    spectrum,
    stable_rank,
    weight_norms,
    weight_spectrum,
)
from repanalysis.measures.streaming import (
    Moments,
    RowView,
    streaming_canonical_correlations,
    streaming_cca,
    streaming_linear_cka,
    streaming_procrustes,
    streaming_pwcca,
    streaming_singular_values,
    streaming_spectrum,
    streaming_svcca,
)

__all__ = [
    "RepanalysisWarning",
    "canonical_correlations", "cca", "svcca", "pwcca", "expected_null_cca",
    "linear_cka", "rbf_cka", "MinibatchCKA", "minibatch_cka",
    "procrustes", "procrustes_distance",
    "rdm", "rsa", "compare_rdms",
    "Spectrum", "spectrum", "singular_values", "effective_rank", "stable_rank",
    "participation_ratio", "numerical_rank", "spectral_summary",
    "weight_spectrum", "weight_norms",
    "gradient_error",
    "Moments", "RowView", "streaming_linear_cka", "streaming_canonical_correlations",
    "streaming_cca", "streaming_svcca", "streaming_pwcca", "streaming_procrustes",
    "streaming_spectrum", "streaming_singular_values",
]
