"""The error type for mistakes of the library's user: arguments, files or data it refuses.

Scripts built on dcm_keras (experiments/train.py) report these in one line and let every other
exception, a bug, keep its traceback.
"""


class UserError(ValueError):
    """A mistake in what the caller asked for, which the caller can fix.

    A ValueError, so code that caught the ValueErrors these checks raised before still catches it.
    """
