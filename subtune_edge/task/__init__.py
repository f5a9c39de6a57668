"""The task file: what one SubTuned task adds to a frozen backbone, and nothing else.

Like a PEFT adapter, ``<name>.safetensors`` holds only trained tensors: the task's copies of its
tuned units (names prefixed by the unit name, e.g. ``layer4.1.conv1.weight``) and its head
(``head.weight``, ``head.bias``). The ``__metadata__`` entry ``subtune_edge`` holds JSON with
what is needed to rebuild and check the rest: the backbone spec, the fingerprint of the frozen
weights the task was trained on, the tuned units, the head shape, labels, preprocessing, the
Siamese flag, the training record, and a hash of the tensor bytes (so an edited or truncated
file is refused instead of half-loaded).

A task file is data: loading checks every metadata field (:mod:`.metadata`), never opens a path or
passes an argument it names, and a task name never leaves its folder (:func:`validate_task_name`).
"""

from .file import Task, content_hash, load_task, load_tasks, make_task, resolve_task_path, save_task
from .metadata import FORMAT, FORMAT_VERSION, MAX_NAME_LENGTH, METADATA_KEY, SUFFIX, TaskMetadata, validate_task_name

__all__ = ["FORMAT", "FORMAT_VERSION", "MAX_NAME_LENGTH", "METADATA_KEY", "SUFFIX", "Task", "TaskMetadata",
           "content_hash", "load_task", "load_tasks", "make_task", "resolve_task_path", "save_task",
           "validate_task_name"]
