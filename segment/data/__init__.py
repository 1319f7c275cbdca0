"""Training data: the synthetic shape generator, image/mask folders and `tf.data` streams.

- `presets`: the generator's settings (`GeneratorConfig`), difficulty presets and mixtures.
- `drawing`: object shapes and the surfaces that fill objects and backgrounds.
- `synthetic`: one seeded sample (`make_sample`), degradations, `synthetic_arrays`.
- `folders`: `DIR/images` + `DIR/masks` folders, splits, reading and writing pairs.
- `polygons`: masks from polygon annotation exports (COCO and LabelMe JSON).
- `groups`: near-copies among a folder's images (a video's frames), so that validation
  holds out whole groups.
- `augment`: scale, rotation, shift, flips and colour changes of photographs, and another
  image's object pasted in.
- `streams`: endless, seeded, resumable `tf.data` streams (`synthetic_dataset`,
  `folder_dataset`).

Sample `i` of seed `s` comes from its own generator, `np.random.default_rng([s, i])`, so it is
the same on any machine, in any order, at any degree of parallelism. Every problem with a
user's files raises `segment.imageio.DataError` naming them.
"""

from segment.data.augment import GROUPED_PASTE_PROBABILITY, PASTE_PROBABILITY
from segment.data.folders import (
    IMAGE_FOLDERS,
    MASK_FOLDERS,
    MASK_SUFFIXES,
    SPLIT_NAMES,
    dataset_splits,
    find_pairs,
    foreground_fraction,
    image_files,
    load_pairs,
    lossy_mask_note,
    pairing_note,
    read_pair,
    split_pairs,
    write_folder,
)
from segment.data.groups import (
    MAX_VAL_SHARE,
    MIN_VAL_GROUPS,
    NEAR_DUPLICATE,
    VAL_IMAGES_PER_GROUP,
    Split,
    find_groups,
    frame_runs,
    near_duplicates,
    read_groups_file,
    split_by_groups,
    thin_groups,
    thumbnail,
)
from segment.data.polygons import (
    SHAPE_TYPES,
    AnnotatedImage,
    annotation_files,
    annotation_format,
    decode_rle,
    draw_mask,
    read_annotations,
    read_coco,
    read_labelme,
    rle_counts_from_string,
)
from segment.data.presets import (
    APPEARANCE_KINDS,
    DIFFICULTIES,
    MIXTURES,
    PRESETS,
    SHAPE_KINDS,
    GeneratorConfig,
    Mixture,
    generator_config,
)
from segment.data.streams import (
    batched_dataset,
    folder_dataset,
    stream_positions,
    synthetic_dataset,
)
from segment.data.synthetic import (
    DATASET_STREAM,
    add_gaussian_noise,
    add_salt_and_pepper,
    make_sample,
    sample_rng,
    scale_contrast,
    synthetic_arrays,
    synthetic_sequence,
)

__all__ = [
    "GROUPED_PASTE_PROBABILITY",
    "PASTE_PROBABILITY",
    "add_gaussian_noise",
    "add_salt_and_pepper",
    "AnnotatedImage",
    "annotation_files",
    "annotation_format",
    "APPEARANCE_KINDS",
    "batched_dataset",
    "dataset_splits",
    "DATASET_STREAM",
    "decode_rle",
    "DIFFICULTIES",
    "draw_mask",
    "find_groups",
    "find_pairs",
    "folder_dataset",
    "foreground_fraction",
    "image_files",
    "frame_runs",
    "generator_config",
    "GeneratorConfig",
    "IMAGE_FOLDERS",
    "load_pairs",
    "lossy_mask_note",
    "make_sample",
    "MASK_FOLDERS",
    "MASK_SUFFIXES",
    "Mixture",
    "MIXTURES",
    "NEAR_DUPLICATE",
    "near_duplicates",
    "pairing_note",
    "PRESETS",
    "read_annotations",
    "read_coco",
    "read_groups_file",
    "read_labelme",
    "read_pair",
    "rle_counts_from_string",
    "sample_rng",
    "scale_contrast",
    "SHAPE_KINDS",
    "SHAPE_TYPES",
    "Split",
    "split_by_groups",
    "SPLIT_NAMES",
    "split_pairs",
    "stream_positions",
    "synthetic_arrays",
    "VAL_IMAGES_PER_GROUP",
    "MAX_VAL_SHARE",
    "MIN_VAL_GROUPS",
    "thin_groups",
    "synthetic_dataset",
    "synthetic_sequence",
    "thumbnail",
    "write_folder",
]
