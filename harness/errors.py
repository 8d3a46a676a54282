"""The one exception type for bad user input: the CLI prints its message as one line and exits
with its code (2 by default), so library code raises it instead of printing."""


class HarnessError(Exception):
    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code
