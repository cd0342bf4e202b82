"""A real Jupyter kernel for the tests, driven through the kernel protocol.

Started by test/kernel.test.ts with /usr/bin/python3 (Debian's ipykernel and
jupyter_client). It starts an IPython kernel with jupyter_client's
KernelManager, then reads one JSON request per line on stdin,
``{"code": "...", "timeout": seconds}``, sends it as an ``execute_request``
on the shell channel, collects what the cell published on the IOPub channel
until the kernel is idle again, and answers one JSON line on stdout:
``{"status": "ok"|"error", "execution_count": n, "stdout": "...",
"stderr": "...", "result": "text/plain of the value or null",
"error": {"ename", "evalue"} or null}``.

It ends the kernel when stdin closes (the test is done or died), so no kernel
outlives its test. The kernel's environment is this process's: the test
passes PYTHONPATH (for berth_client), BERTH_URL and BERTH_TOKEN.
"""

import json
import os
import queue
import shutil
import sys
import tempfile

from jupyter_client.manager import KernelManager


def main() -> None:
    runtime = tempfile.mkdtemp(prefix="berth-kernel-")
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": runtime, "IPYTHONDIR": os.path.join(runtime, "ipython"),
           "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, extra_arguments=["--HistoryManager.hist_file=:memory:"])
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        print(json.dumps({"ready": True, "pid": km.provisioner.pid if km.provisioner else None}), flush=True)
        for line in sys.stdin:
            if not line.strip():
                continue
            request = json.loads(line)
            print(json.dumps(execute(kc, request["code"], float(request.get("timeout", 120)))), flush=True)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        shutil.rmtree(runtime, ignore_errors=True)


def execute(kc, code: str, timeout: float) -> dict:
    msg_id = kc.execute(code)
    stdout, stderr, result, error = [], [], None, None
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            return {"status": "timeout", "stdout": "".join(stdout), "stderr": "".join(stderr),
                    "result": result, "error": {"ename": "Timeout", "evalue": f"no answer in {timeout}s"}}
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            (stdout if content["name"] == "stdout" else stderr).append(content["text"])
        elif kind == "execute_result":
            result = content["data"].get("text/plain")
        elif kind == "error":
            error = {"ename": content["ename"], "evalue": content["evalue"]}
        elif kind == "status" and content["execution_state"] == "idle":
            break
    reply = kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=timeout)
    return {"status": reply["content"]["status"], "execution_count": reply["content"].get("execution_count"),
            "stdout": "".join(stdout), "stderr": "".join(stderr), "result": result, "error": error}


if __name__ == "__main__":
    main()
