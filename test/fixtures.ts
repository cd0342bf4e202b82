// Checkpoint sources the tests serve.

/** One serving cell with a switch for every way a call can go wrong. */
export const LAB_CELLS = [
  `import time
calls = 0
mode, arg = "echo", None   # the serving cell runs once when the checkpoint is made
`,
  `calls += 1
if mode == "echo":
    result = arg
elif mode == "raise":
    raise ValueError(f"bad value {arg!r}")
elif mode == "missing":
    globals().pop("result", None)
elif mode == "unserializable":
    result = object()
elif mode == "big":
    result = "x" * arg
elif mode == "sleep":
    time.sleep(arg)
    result = arg
elif mode == "spin":
    while True:
        pass
elif mode == "print":
    print("cell says", arg)
    result = arg
elif mode == "calls":
    result = calls
`,
];

export const LAB_NODE = {
  kind: 'cell',
  inputs: [{ name: 'mode', type: 'str' }, { name: 'arg', type: 'any' }],
  outputs: [{ name: 'result', type: 'any' }],
};

/** State that changes between calls on one instance. */
export const COUNTER_CELLS = [
  'counter = 0\nstep = 0\n',
  'counter += step\ntotal = counter\n',
];
