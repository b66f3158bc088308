"""The user-facing error type: one clear sentence, exit code 2 at the CLI, no traceback."""


class EventformerError(Exception):
    """A problem with the user's input (file, model, option), stated in one sentence."""


class ModelFileError(EventformerError):
    """A model file that is missing, of another format or version, or internally inconsistent."""


class CheckpointError(EventformerError):
    """A PyTorch checkpoint that cannot be exported (missing or unexpected keys, wrong shapes)."""
