// Run a Cloudflare Python Worker's code inside real Pyodide under Node, offline.
//
//   node harness.mjs --path DIR [--path DIR ...] [--wheels DIR] [--no-entropy-guard] [JOB_JSON ...]
//
// Each --path directory is copied into Pyodide's file system and put on sys.path, in
// order (a built bundle: --path bundle/src --path bundle/python_modules, as workerd
// lays them out). --wheels DIR unpacks every wheel in DIR into site-packages.
//
// With JOB_JSON arguments, runs each job and prints one JSON line per job.
// Without them, reads JSON jobs line by line from stdin and answers each with
// one JSON line on stdout (keeps one warm Pyodide for a whole pytest session).
// Everything else (Python print, Pyodide messages) goes to stderr; a job's
// Python stdout is also returned in the job's "stdout" field.
//
// Jobs:
//  {"op":"fetch","module":"worker","class":"Default",
//   "request":{"url":"https://x/","method":"GET","headers":[["k","v"]],
//              "body":"text" | "body_b64":"...", "cf":{...} | null},
//   "kv":{"NS":{"key":"text" | {"b64":"..."}}}, "vars":{"GREETING":"hi"},
//   "queues":{"Q":"ok" | "error"}}
//  -> {"ok":true,"status":..,"statusText":..,"headers":[[k,v]..],"set_cookie":[..],
//      "body_b64":..,"body_text":..,"wait_until":{"count":n,"rejected":[..]},
//      "kv":{"NS":{"key":{"b64":..}}},"queues":{"Q":[[{"body":..,"contentType":..}..]..]},"ms":..}
//  {"op":"call","module":"golden","func":"vectors","args":[3],"kwargs":{}}
//  -> {"ok":true,"result":<JSON of the Python return value>}
//  {"op":"ping"} -> {"ok":true,"boot_ms":..}
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadPyodide } from 'pyodide';

const HERE = dirname(fileURLToPath(import.meta.url));
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
// Keep stdout for results only.
console.log = (...a) => process.stderr.write(a.join(' ') + '\n');

// A Pyodide error that escapes makes Node print the whole 1.2 MB minified
// pyodide.asm.mjs line: report fatal errors briefly instead.
for (const ev of ['uncaughtException', 'unhandledRejection']) {
  process.on(ev, (e) => {
    process.stderr.write(`harness ${ev}: ${e?.stack ?? e}\n`);
    out({ ok: false, fatal: true, error: String(e?.message ?? e) });
    process.exit(1);
  });
}

// ---------- args ----------
const argv = process.argv.slice(2);
const opts = { paths: [], wheels: null, entropyGuard: true, jobs: [] };
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--path') opts.paths.push(resolve(argv[++i]));
  else if (a === '--wheels') opts.wheels = resolve(argv[++i]);
  else if (a === '--no-entropy-guard') opts.entropyGuard = false;
  else opts.jobs.push(JSON.parse(a));
}
if (!opts.paths.length) {
  process.stderr.write('usage: node harness.mjs --path DIR [--path DIR ...] [--wheels DIR] [JOB_JSON ...]\n');
  process.exit(2);
}

// ---------- runtime stand-ins ----------
// workerd's ExecutionContext: waitUntil collects promises the harness drains.
class ExecutionContext {
  constructor() { this.pending = []; this.props = {}; }
  waitUntil(p) { this.pending.push(Promise.resolve(p)); }
  passThroughOnException() {}
  get [Symbol.toStringTag]() { return 'ExecutionContext'; }
}

const bytesOf = (v) => {
  if (typeof v === 'string') return new TextEncoder().encode(v);
  if (v instanceof ArrayBuffer) return new Uint8Array(v.slice(0));
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength));
  throw new TypeError(`KV put: unsupported value type ${Object.prototype.toString.call(v)}`);
};

// Class name matters: the SDK's _EnvWrapper wraps bindings whose constructor.name
// is "KvNamespace" in _BindingWrapper, which converts results with python_from_rpc
// (ArrayBuffer -> memoryview, null -> None), as in workerd.
class KvNamespace {
  // mode: 'ok', 'error' (every read rejects), 'slow' (reads take 2 s) or 'slow_profiles' (reads of
  // visitor profiles, perch:profile:*, take 2 s).
  constructor(init = {}, mode = 'ok') {
    this.mode = mode;
    this.reads = 0;
    this.store = new Map();
    for (const [k, v] of Object.entries(init)) {
      this.store.set(k, typeof v === 'string' ? bytesOf(v) : new Uint8Array(Buffer.from(v.b64, 'base64')));
    }
  }
  async get(key, options) {
    this.reads += 1;
    if (this.mode === 'error') throw new Error('KV unavailable (injected)');
    if (this.mode === 'slow' || (this.mode === 'slow_profiles' && key.startsWith('perch:profile:'))) {
      await new Promise((r) => setTimeout(r, 2000));
    }
    const type = typeof options === 'string' ? options : (options?.type ?? 'text');
    const v = this.store.get(key);
    if (v === undefined) return null;
    switch (type) {
      case 'arrayBuffer': return v.slice().buffer;
      case 'text': return new TextDecoder().decode(v);
      case 'json': return JSON.parse(new TextDecoder().decode(v));
      case 'stream': return new Blob([v]).stream();
      default: throw new TypeError(`KV get: unknown type ${type}`);
    }
  }
  async put(key, value, _options) { this.store.set(key, bytesOf(value)); }
  async delete(key) { this.store.delete(key); }
  async list(_options) {
    return { keys: [...this.store.keys()].sort().map((name) => ({ name })), list_complete: true, cursor: '' };
  }
  dump() {
    return Object.fromEntries([...this.store].map(([k, v]) => [k, { b64: Buffer.from(v).toString('base64') }]));
  }
}

// A Queues producer binding. Named WorkerQueue like workerd's, so the SDK wraps it as it does
// there. Records each sendBatch call (what a consumer would pull) and, as Cloudflare does,
// refuses a call over its limits. mode: 'ok', or 'error' (every call rejects).
const QUEUE_LIMITS = { messages: 100, messageBytes: 128 * 1024, batchBytes: 256 * 1024 };
class WorkerQueue {
  constructor(mode = 'ok') { this.mode = mode; this.calls = []; }
  async send(body, options) { return this.sendBatch([{ body, ...(options ?? {}) }]); }
  async sendBatch(messages, _options) {
    const batch = [...messages].map((m) => ({
      body: m.body, contentType: m.contentType, kind: Object.prototype.toString.call(m),
    }));
    this.calls.push(batch);
    if (this.mode === 'error') throw new Error('Queue send failed: internal error (injected)');
    const sizes = batch.map((m) => Buffer.byteLength(typeof m.body === 'string' ? m.body : JSON.stringify(m.body)));
    if (batch.length > QUEUE_LIMITS.messages) throw new Error(`sendBatch: ${batch.length} messages`);
    if (sizes.some((n) => n > QUEUE_LIMITS.messageBytes)) throw new Error('sendBatch: message too large');
    if (sizes.reduce((a, b) => a + b, 0) > QUEUE_LIMITS.batchBytes) throw new Error('sendBatch: batch too large');
  }
}

// _pyodide_entrypoint_helper: what workerd registers (python-entrypoint-helper.ts).
const waitUntilPatched = new WeakSet();
function patchWaitUntil(ctx) {
  if (!ctx || typeof ctx.waitUntil !== 'function' || waitUntilPatched.has(ctx)) return;
  const orig = ctx.waitUntil.bind(ctx);
  // The Python awaitable arrives as a borrowed PyProxy that Python destroys when the
  // call returns: copy it synchronously, destroy the copy once it settles.
  ctx.waitUntil = (p) => {
    if (p && typeof p.copy === 'function') p = p.copy();
    orig((async () => {
      try { await p; } finally { if (p && typeof p.destroy === 'function') p.destroy(); }
    })());
  };
  waitUntilPatched.add(ctx);
}
const entrypointHelper = {
  patchWaitUntil,
  cloudflareWorkersModule: { env: {}, waitUntil: () => { throw new Error('cloudflare:workers.waitUntil not emulated'); } },
  cloudflareSocketsModule: {},
  doAnImport: async (name) => { throw new Error(`import_from_javascript(${name}) not emulated`); },
  patch_env_helper: () => { throw new Error('patch_env not emulated'); },
};

// _cloudflare_compat_flags: every compat flag reads False.
const COMPAT_FLAGS_PY = `
def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return False
`;

// Python side of the harness (mirrors workerd's introspection.wrapper_func).
const RT_PY = `
import importlib, inspect, json, os, random, sys
from pyodide.code import relaxed_call
from workers import python_from_rpc, python_to_rpc

STARTUP = False

def _guard(fn, name):
    def guarded(*a, **k):
        if STARTUP:
            raise RuntimeError(
                f"{name}() called while the Worker module is being imported: workerd "
                "forbids randomness at startup; move it into a handler")
        return fn(*a, **k)
    return guarded

def install_entropy_guard():
    for n in ("random", "randint", "randrange", "choice", "choices", "shuffle", "sample",
              "uniform", "getrandbits", "randbytes", "gauss", "normalvariate", "triangular"):
        if hasattr(random, n):
            setattr(random, n, _guard(getattr(random, n), "random." + n))
    os.urandom = _guard(os.urandom, "os.urandom")

def import_module(name, guard):
    global STARTUP
    STARTUP = guard
    try:
        return importlib.import_module(name)
    finally:
        STARTUP = False

async def call_entry(relaxed, inst, prop, *args):
    method = getattr(inst, prop)
    py_args = [python_from_rpc(a) for a in args]
    result = relaxed_call(method, *py_args) if relaxed else method(*py_args)
    if inspect.isawaitable(result):
        result = await result
    return python_to_rpc(result)

async def call_json(modname, funcname, args_json):
    spec = json.loads(args_json)
    fn = getattr(importlib.import_module(modname), funcname)
    result = fn(*spec.get("args", []), **spec.get("kwargs", {}))
    if inspect.isawaitable(result):
        result = await result
    return json.dumps(result)
`;

// ---------- boot ----------
const tBoot = performance.now();
let captured = [];
const py = await loadPyodide({
  indexURL: join(HERE, '..', '..', 'node_modules', 'pyodide') + '/',
  stdout: (s) => { captured.push(s); process.stderr.write(`[py] ${s}\n`); },
  stderr: (s) => { captured.push(s); process.stderr.write(`[py:err] ${s}\n`); },
  env: { PYTHONDONTWRITEBYTECODE: '1' },
});
const site = py.runPython('import site; site.getsitepackages()[0]');
for (const f of opts.wheels ? readdirSync(opts.wheels).filter((f) => f.endsWith('.whl')).sort() : []) {
  // unpackArchive wants a Uint8Array (a Node Buffer is rejected).
  py.unpackArchive(new Uint8Array(readFileSync(join(opts.wheels, f))), 'wheel', { extractDir: site });
}
py.registerJsModule('_pyodide_entrypoint_helper', entrypointHelper);
py.FS.writeFile(`${site}/_cloudflare_compat_flags.py`, COMPAT_FLAGS_PY);
py.FS.writeFile(`${site}/_harness_rt.py`, RT_PY);

// Copy the source directories into the Pyodide FS (no __pycache__).
function copyTree(src, dst) {
  py.FS.mkdirTree(dst);
  for (const name of readdirSync(src)) {
    if (name === '__pycache__' || name.startsWith('.')) continue;
    const p = join(src, name);
    if (statSync(p).isDirectory()) copyTree(p, `${dst}/${name}`);
    else py.FS.writeFile(`${dst}/${name}`, new Uint8Array(readFileSync(p)));
  }
}
const mounted = opts.paths.map((p, i) => {
  const dst = `/home/pyodide/path${i}`;
  copyTree(p, dst);
  return dst;
});
py.runPython(`import sys; sys.path[0:0] = ${JSON.stringify(mounted)}`);
const rt = py.pyimport('_harness_rt');
if (opts.entropyGuard) rt.install_entropy_guard();
const bootMs = performance.now() - tBoot;

// ---------- jobs ----------
const modules = new Map();
function getModule(name) {
  if (!modules.has(name)) modules.set(name, rt.import_module(name, opts.entropyGuard));
  return modules.get(name);
}

function buildRequest(spec = {}) {
  const init = { method: spec.method ?? 'GET', headers: spec.headers ?? [] };
  if (spec.body_b64 != null) init.body = Buffer.from(spec.body_b64, 'base64');
  else if (spec.body != null) init.body = spec.body;
  const req = new Request(spec.url ?? 'https://example.com/', init);
  // Node's Request has no cf; workerd's incoming requests do. (Lost on req.clone().)
  Object.defineProperty(req, 'cf', { value: spec.cf === undefined ? {} : spec.cf, enumerable: true });
  return req;
}

async function drain(ctx) {
  let count = 0;
  const rejected = [];
  while (ctx.pending.length) {
    const batch = ctx.pending.splice(0);
    count += batch.length;
    for (const r of await Promise.allSettled(batch)) {
      if (r.status === 'rejected') rejected.push(String(r.reason?.message ?? r.reason));
    }
  }
  return { count, rejected };
}

async function runFetch(job) {
  const t0 = performance.now();
  const mod = getModule(job.module ?? 'worker');
  const cls = mod[job.class ?? 'Default'];
  if (!cls) throw new Error(`no class ${job.class ?? 'Default'} in ${job.module ?? 'worker'}`);
  const kvs = {};
  const env = { ...(job.vars ?? {}) };
  for (const [name, init] of Object.entries(job.kv ?? { NS: {} })) {
    env[name] = kvs[name] = new KvNamespace(init, job.kv_mode?.[name] ?? 'ok');
  }
  const queues = {};
  for (const [name, mode] of Object.entries(job.queues ?? {})) env[name] = queues[name] = new WorkerQueue(mode);
  const ctx = new ExecutionContext();
  // workerd: new EntrypointWrapper(ctx, env) -> Python Default(ctx, env); one per request.
  const inst = cls(ctx, env);
  let resp;
  try {
    // workerd: introspection.wrapper_func(relaxed=True, inst, "fetch", request)
    resp = await rt.call_entry(true, inst, 'fetch', buildRequest(job.request));
  } finally {
    inst.destroy();
  }
  const tResp = performance.now();
  if (!(resp instanceof Response)) throw new Error(`fetch returned ${Object.prototype.toString.call(resp)}, not a Response`);
  const body = new Uint8Array(await resp.arrayBuffer());
  let text = null;
  try { text = new TextDecoder('utf-8', { fatal: true }).decode(body); } catch {}
  const waitUntil = await drain(ctx);
  return {
    status: resp.status,
    statusText: resp.statusText,
    headers: [...resp.headers],
    set_cookie: resp.headers.getSetCookie(),
    body_b64: Buffer.from(body).toString('base64'),
    body_text: text,
    wait_until: waitUntil,
    kv: Object.fromEntries(Object.entries(kvs).map(([k, v]) => [k, v.dump()])),
    kv_reads: Object.fromEntries(Object.entries(kvs).map(([k, v]) => [k, v.reads])),
    queues: Object.fromEntries(Object.entries(queues).map(([k, v]) => [k, v.calls])),
    ms: tResp - t0,
    ms_total: performance.now() - t0,
  };
}

async function runCall(job) {
  getModule(job.module);
  const res = await rt.call_json(job.module, job.func, JSON.stringify({ args: job.args ?? [], kwargs: job.kwargs ?? {} }));
  return { result: JSON.parse(res) };
}

async function runJob(job) {
  captured = [];
  try {
    let res;
    if (job.op === 'fetch') res = await runFetch(job);
    else if (job.op === 'call') res = await runCall(job);
    else if (job.op === 'ping') res = { boot_ms: bootMs, pyodide: py.version };
    else throw new Error(`unknown op ${job.op}`);
    return { ok: true, ...res, stdout: captured };
  } catch (e) {
    return { ok: false, error: String(e?.message ?? e), type: e?.type ?? e?.name, stdout: captured };
  }
}

if (opts.jobs.length) {
  for (const job of opts.jobs) out(await runJob(job));
} else {
  const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of rl) {
    if (line.trim()) out(await runJob(JSON.parse(line)));
  }
}
