"""A process forked after its producers' metrics were recorded: the OpenTelemetry SDK's own hook in the
child must not wait on a lock the fork held. In a fresh interpreter, as the order of imports is the point."""

import subprocess
import sys
import textwrap


def test_a_process_forked_after_recording_a_producers_metrics_has_a_child_that_runs():
    # The SDK's MeterProvider re-detects its resource in a forked child, through a ThreadPoolExecutor,
    # whose module frees in the child the lock the fork held, in its own hook. A provider made before
    # that module was imported (a producer's: its resource given) ran first, and the child hung there.
    code = textwrap.dedent(
        """
        import os, sys, time
        from otel_bridge.correlate.outputs import Observation, Resource
        from otel_bridge.export.metrics import MetricsHub

        MetricsHub().record([Observation("workflow.execution.errors", 1.0, (), Resource("shop", "production"))])
        import concurrent.futures.thread  # what any later code may import
        child = os.fork()
        if child == 0:
            os._exit(7)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done, status = os.waitpid(child, os.WNOHANG)
            if done:
                sys.exit(0 if os.waitstatus_to_exitcode(status) == 7 else 1)
            time.sleep(0.02)
        os.kill(child, 9)
        sys.exit("the forked child hung")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
