"""Running a suite beyond one process: the Ray executor (``--executor ray``)."""
