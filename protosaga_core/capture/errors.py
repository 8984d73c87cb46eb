"""The one error of the capture step: it names the input, the step and what to try."""


class CaptureError(ValueError):
    """Photos or a video that cannot be made into a posed dataset; says why and what to try."""
