"""The run file (HDF5), the contract between training and everything else.

``hdf5``: ``RunWriter`` and ``RunFile`` (the schema is in the guide's run-file page); ``dtypes``: how
recorded arrays are stored (float32, float16, bfloat16); ``recorder``: ``Recorder``, the one writer path,
from any torch model in any loop; ``background``: its writer thread; ``summary``: the readable summary that
``repanalysis inspect`` prints.

``from repanalysis.runfile import RunFile`` reads a run file (h5py and numpy only); ``Recorder`` is
``repanalysis.Recorder``.
"""

from .hdf5 import RunFile, RunWriter

__all__ = ["RunFile", "RunWriter"]
