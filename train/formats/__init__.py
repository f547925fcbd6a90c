"""Readers for the data formats users already hold, and the Pipe-mode streaming dataset.

base.py        Sample (an image and its labels, and where it is), FormatOptions, DataFormatError
select.py      which reader reads each split (input mode, content type, files): plan() -> DataPlan
imagefolder.py class-folder trees
lst.py         MXNet / built-in algorithm .lst image lists
recordio.py    MXNet RecordIO .rec files and streams; RecordRef (a record read on demand)
groundtruth.py Ground Truth / Rekognition Custom Labels manifests, File and Pipe mode
manifest.py    plain CSV / JSON-lines manifests of path and label
labels.py      the class list (LabelCensus) and targets (Targets, MultiHot)
pipe.py        Pipe mode: each rank's share of a channel's passes, the fan-out (PipeReader)
pipe_dataset.py  StreamSamples: a rank's share as a torch IterableDataset
fifo.py        the FIFOs: opening with deadlines, the pass counter, fork-safe descriptors
bad_images.py  undecodable images: counted across loader workers, fatal past a threshold

Every reader yields Samples; an error in a record is a DataFormatError (a ConfigError)
whose message says where the record is. Nothing runs at import.
"""

from train.formats.bad_images import BadImages, TooManyBadImages
from train.formats.base import DATA_FORMATS, LABEL_FORMATS, DataFormatError, FormatOptions, Sample
from train.formats.labels import LabelCensus, MultiHot, Targets, census
from train.formats.recordio import RecordRef, image_source
from train.formats.select import DataPlan, SplitSource, plan

__all__ = [
    "DATA_FORMATS",
    "LABEL_FORMATS",
    "BadImages",
    "DataFormatError",
    "DataPlan",
    "FormatOptions",
    "LabelCensus",
    "MultiHot",
    "RecordRef",
    "Sample",
    "SplitSource",
    "Targets",
    "TooManyBadImages",
    "census",
    "image_source",
    "plan",
]
