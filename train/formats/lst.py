""".lst files: the image lists of MXNet's im2rec and SageMaker's built-in Image
Classification algorithm.

One image per line, tab-separated: `index<TAB>label[<TAB>label...]<TAB>relative/path`.
Labels are numbers (im2rec writes 3.000000): class ids, or with label-format=multi-hot a
0/1 vector over all classes. The built-in algorithm takes the images in the `train` and
`validation` channels and the lists in `train_lst` and `validation_lst`; paths are
relative to the image channel and may not leave it.
"""

from __future__ import annotations

from pathlib import Path

from train.formats.base import DataFormatError, Sample, class_ids, inside


def read(lst_path: Path, image_root: Path, multi_hot: bool) -> list[Sample]:
    samples = []
    seen: dict[str, int] = {}
    with open(lst_path, encoding="utf-8", newline="") as file:
        for number, line in enumerate(file, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            where = f"{lst_path.name} line {number}"
            fields = line.split("\t")
            if len(fields) < 3:
                raise DataFormatError(
                    f"{where}: expected 'index<TAB>label<TAB>path' (tab-separated), found {len(fields)} field(s): {line[:120]!r}"
                )
            index, labels, relative = fields[0].strip(), fields[1:-1], fields[-1]
            if not index.isdigit():
                raise DataFormatError(f"{where}: the first field, the image index, is {index!r}, not a whole number")
            if index in seen:
                raise DataFormatError(f"{where}: image index {index} already used on line {seen[index]}")
            seen[index] = number
            path = inside(image_root, relative, where)
            samples.append(Sample(str(path), class_ids(labels, where, multi_hot), key=relative.strip(), where=where))
    return samples
