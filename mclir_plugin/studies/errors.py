"""The error of the study library: a run folder, option file or study that cannot be read, planned or drawn."""


class StudyError(ValueError):
    """The message names the folder, file or option at fault and the fix; the commands print it and exit with 2."""
