"""A call in a background thread whose result (or error) the test collects."""

import threading


class Background:
    def __init__(self, function):
        self._box = {}
        self._thread = threading.Thread(target=self._run, args=(function,), daemon=True)
        self._thread.start()

    def _run(self, function) -> None:
        try:
            self._box["result"] = function()
        except BaseException as error:  # re-raised by result()
            self._box["error"] = error

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def result(self, timeout: float = 120.0):
        self._thread.join(timeout=timeout)
        assert not self._thread.is_alive(), f"the call did not return in {timeout} s"
        if "error" in self._box:
            raise self._box["error"]
        return self._box["result"]
