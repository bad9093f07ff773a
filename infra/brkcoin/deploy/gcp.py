"""`brkcoin deploy gcp`: Cloud Run functions, Memorystore, Cloud Scheduler with OIDC.

Why `gcloud run deploy NAME --source DIR --function TARGET --base-image python312`
rather than `gcloud functions deploy --gen2`: Cloud Run functions are Cloud Run
services, and only `gcloud run deploy` offers Direct VPC egress
(`--network/--subnet/--vpc-egress`) to reach Memorystore without a Serverless
VPC Access connector; it is the form Google documents for new functions.

The deploy is a plan of gcloud commands. Each creation is guarded by a
`describe`, so the plan can be run again; values only known once a resource
exists (Redis host, service URLs) are shell variables captured from `describe`.
`--dry-run` prints the plan as shell, runnable by copy-paste from the repo root.

Quoting: an argument is literal text, a `Var` (a variable the plan itself
captures), or both run together. In the printed script literal text is always
single-quoted by shlex and a `Var` is written "${NAME}", so those variables are
the only thing the shell expands, and their values are not parsed again.
Whatever the user typed is literal text: it can never name a variable.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cronsim import CronSim, CronSimError

from brkcoin.deploy.common import DeployError, require_tool
from brkcoin.layout import FUNCTIONS, ROOT

GCLOUD_HINT = ("install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) and "
               "run `gcloud auth login`, or use --dry-run to print the commands")
APIS = ("run.googleapis.com", "cloudbuild.googleapis.com", "artifactregistry.googleapis.com",
        "compute.googleapis.com", "redis.googleapis.com", "cloudscheduler.googleapis.com")
ROLES = ("rng", "hasher", "worker", "webui", "scheduler")  # one service account each
# Compute Engine resource names (networks, subnets): RFC 1035 labels.
RESOURCE_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
CRON_FIELD = r"[0-9A-Za-z*/,-]+"
CRON = re.compile(rf"{CRON_FIELD}(?: +{CRON_FIELD}){{4}}")  # unix-cron: five fields


@dataclass(frozen=True)
class Var:
    """A shell variable the plan sets itself from a captured step's output."""

    name: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", self.name):
            raise ValueError(f"not a plan variable name: {self.name!r}")


Part = str | Var
Word = Part | tuple[Part, ...]  # one argument: text, a variable, or several run together
Command = tuple[Word, ...]

REDIS_HOST = Var("REDIS_HOST")


def url_of(service: str) -> Var:
    """The variable holding a deployed service's URL, e.g. WORKER_URL."""
    return Var(f"{service.upper()}_URL")


def _parts(word: Word) -> tuple[Part, ...]:
    return word if isinstance(word, tuple) else (word,)


def join(*words: Word) -> Word:
    """Several words run together into one argument (adjacent text merged)."""
    parts: list[Part] = []
    for part in (p for word in words for p in _parts(word)):
        last = parts[-1] if parts else None
        if isinstance(part, str) and isinstance(last, str):
            parts[-1] = last + part
        else:
            parts.append(part)
    return parts[0] if len(parts) == 1 else tuple(parts)


def shell_word(word: Word) -> str:
    """One argument as POSIX shell: text single-quoted as needed, variables "${NAME}"."""
    quoted = "".join(shlex.quote(p) if isinstance(p, str) else f'"${{{p.name}}}"'
                     for p in _parts(word))
    return quoted or "''"


def argv(command: Sequence[Word], variables: Mapping[str, str]) -> list[str]:
    """The command's arguments with each variable's value put in."""
    def text(part: Part) -> str:
        if isinstance(part, str):
            return part
        try:
            return variables[part.name]
        except KeyError:
            raise DeployError(f"${{{part.name}}} is used before it is known") from None

    return ["".join(text(p) for p in _parts(word)) for word in command]


def _shell(command: Command) -> str:
    return " ".join(shell_word(word) for word in command)


@dataclass(frozen=True)
class Step:
    """One gcloud command, optionally guarded by a `describe` check or captured."""

    command: Command
    check: Command = ()  # run first; its success decides as below
    if_exists: Command = ()  # run this instead of `command` when check succeeds
    only_if_exists: bool = False  # run `command` only when check succeeds (deletions)
    capture: Var | None = None  # set this shell variable from the command's output

    def shell(self) -> str:
        """The step as one line of POSIX shell."""
        command = _shell(self.command)
        if self.capture:
            return f"{self.capture.name}=$({command})"
        if not self.check:
            return command
        check = f"{_shell(self.check)} >/dev/null 2>&1"
        if self.if_exists:
            return f"if {check}; then {_shell(self.if_exists)}; else {command}; fi"
        return f"{check} {'&&' if self.only_if_exists else '||'} {command}"


def add_deploy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", default=os.environ.get("GOOGLE_CLOUD_PROJECT", ""),
                        help="Google Cloud project id (default: $GOOGLE_CLOUD_PROJECT)")
    parser.add_argument("--region", default=os.environ.get("GOOGLE_CLOUD_REGION", ""),
                        help="region, e.g. europe-west1 (default: $GOOGLE_CLOUD_REGION)")
    parser.add_argument("--prefix", default="brkcoin",
                        help="name prefix of the network, Redis, accounts and job")
    parser.add_argument("--network", default="",
                        help="an existing VPC network to use (default: create PREFIX)")
    parser.add_argument("--subnet", default="",
                        help="an existing subnet of --network (default: create PREFIX-REGION)")
    parser.add_argument("--range", default="10.8.0.0/24",
                        help="IP range of the subnet brkcoin creates (default: 10.8.0.0/24)")
    parser.add_argument("--schedule", default="* * * * *",
                        help="cron schedule of the worker (default: every minute)")
    parser.add_argument("--seconds", type=float, default=55.0,
                        help="mining seconds per tick (default: 55)")
    parser.add_argument("--backend-access", choices=("iam", "network"), default="iam",
                        help="how rng and hasher stay private: iam (no unauthenticated "
                             "access; callers need an ID token) or network (ingress internal, "
                             "reached through the worker's VPC egress)")
    parser.add_argument("--base-image", default="python312",
                        help="Cloud Run functions base image (default: python312)")


def add_destroy_arguments(parser: argparse.ArgumentParser) -> None:
    add_deploy_arguments(parser)


def _is_range(value: str) -> bool:
    try:
        network = ipaddress.IPv4Network(value)
    except ValueError:
        return False
    return str(network) == value and 8 <= network.prefixlen <= 29


def _is_cron(value: str) -> bool:
    if not CRON.fullmatch(value):
        return False
    try:
        CronSim(value, datetime.now(UTC))
    except CronSimError:
        return False
    return True


def validate(args: argparse.Namespace) -> None:
    """Refuse every value of a known shape that is not of it, before anything runs."""
    if not args.project:
        raise DeployError("--project is required (or set $GOOGLE_CLOUD_PROJECT)")
    if not re.fullmatch(r"[a-z][a-z0-9.:-]*[a-z0-9]", args.project):
        raise DeployError(f"--project {args.project!r} is not a project id (lowercase letters, "
                          "digits, hyphens)")
    if not args.region:
        raise DeployError("--region is required, e.g. --region europe-west1 "
                          "(or set $GOOGLE_CLOUD_REGION)")
    if not re.fullmatch(r"[a-z]+-[a-z]+[0-9]+", args.region):
        raise DeployError(f"--region {args.region!r} is not a region like europe-west1")
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,14}", args.prefix):
        raise DeployError("--prefix must be lowercase letters, digits and hyphens, at most 15")
    for option, name in (("--network", args.network), ("--subnet", args.subnet)):
        if name and not RESOURCE_NAME.fullmatch(name):
            raise DeployError(f"{option} {name!r} is not a resource name (lowercase letters, "
                              "digits and hyphens, at most 63)")
    if bool(args.network) != bool(args.subnet):
        raise DeployError("--network and --subnet go together (an existing subnet of it)")
    if not _is_range(args.range):
        raise DeployError(f"--range {args.range!r} is not an IPv4 range like 10.8.0.0/24 "
                          "(/8 to /29, no host bits set)")
    if not _is_cron(args.schedule):
        raise DeployError(f"--schedule {args.schedule!r} is not a five-field cron schedule "
                          "like '*/5 * * * *'")
    if not 0 < args.seconds <= 3000:
        raise DeployError("--seconds must be above 0 and at most 3000")


def account(args: argparse.Namespace, role: str) -> str:
    return f"{args.prefix}-{role}@{args.project}.iam.gserviceaccount.com"


def _where(args: argparse.Namespace) -> tuple[str, str]:
    return (f"--region={args.region}", f"--project={args.project}")


def _names(args: argparse.Namespace) -> tuple[str, str]:
    return (args.network or args.prefix, args.subnet or f"{args.prefix}-{args.region}")


def _network_steps(args: argparse.Namespace) -> list[Step]:
    if args.network:
        return []
    network, subnet = _names(args)
    project = f"--project={args.project}"
    return [
        Step(("gcloud", "compute", "networks", "create", network, "--subnet-mode=custom",
              project),
             check=("gcloud", "compute", "networks", "describe", network, project)),
        # Private Google Access: the functions reach Google APIs from the subnet too.
        Step(("gcloud", "compute", "networks", "subnets", "create", subnet,
              f"--network={network}", f"--range={args.range}",
              "--enable-private-ip-google-access", *_where(args)),
             check=("gcloud", "compute", "networks", "subnets", "describe", subnet,
                    *_where(args))),
    ]


def _redis_steps(args: argparse.Namespace) -> list[Step]:
    network, _ = _names(args)
    name = f"{args.prefix}-wallet"
    describe = ("gcloud", "redis", "instances", "describe", name, *_where(args))
    return [
        Step(("gcloud", "redis", "instances", "create", name, "--tier=basic", "--size=1",
              "--redis-version=redis_7_2", "--connect-mode=direct-peering",
              f"--network=projects/{args.project}/global/networks/{network}", *_where(args)),
             check=describe),
        Step((*describe, "--format=value(host)"), capture=REDIS_HOST),
    ]


def _account_steps(args: argparse.Namespace) -> list[Step]:
    project = f"--project={args.project}"
    return [
        Step(("gcloud", "iam", "service-accounts", "create", f"{args.prefix}-{role}",
              f"--display-name=brkcoin {role}", project),
             check=("gcloud", "iam", "service-accounts", "describe", account(args, role), project))
        for role in ROLES
    ]


def _env_vars(env: Mapping[str, Word]) -> Word:
    """--set-env-vars=K=V,K=V as one argument (values may hold variables)."""
    pieces: list[Word] = []
    for key, value in env.items():
        pieces += ["," if pieces else "", f"{key}=", value]
    return join("--set-env-vars=", *pieces)


def _run_deploy(args: argparse.Namespace, name: str, env: Mapping[str, Word], *, public: bool,
                vpc: bool, concurrency: int, timeout: int, egress: str = "private-ranges-only",
                internal: bool = False) -> list[Step]:
    folder = FUNCTIONS[name].folder.relative_to(ROOT).as_posix()
    command: list[Word] = [
        "gcloud", "run", "deploy", name, f"--source={folder}", f"--function={name}",
        f"--base-image={args.base_image}", *_where(args),
        f"--service-account={account(args, name)}",
        "--allow-unauthenticated" if public else "--no-allow-unauthenticated",
        f"--concurrency={concurrency}", f"--timeout={timeout}", "--cpu=1", "--memory=512Mi",
        "--max-instances=10", *(["--ingress=internal"] if internal else []), _env_vars(env),
    ]
    if vpc:
        network, subnet = _names(args)
        # Direct VPC egress: Memorystore's private range (or, with network-private
        # backends, everything, so that calls to them count as internal).
        command += [f"--network={network}", f"--subnet={subnet}", f"--vpc-egress={egress}"]
    url = Step(("gcloud", "run", "services", "describe", name, *_where(args),
                "--format=value(status.url)"), capture=url_of(name))
    return [Step((*command, "--quiet")), url]


def _invoker(args: argparse.Namespace, service: str, role: str) -> Step:
    return Step(("gcloud", "run", "services", "add-iam-policy-binding", service, *_where(args),
                 f"--member=serviceAccount:{account(args, role)}", "--role=roles/run.invoker"))


def _scheduler_steps(args: argparse.Namespace) -> list[Step]:
    job = f"{args.prefix}-worker-tick"
    where = (f"--location={args.region}", f"--project={args.project}")
    worker = url_of("worker")
    common: Command = (
        f"--schedule={args.schedule}", "--time-zone=Etc/UTC", join("--uri=", worker, "/"),
        "--http-method=POST", f"--message-body={{\"seconds\": {args.seconds:g}}}",
        f"--oidc-service-account-email={account(args, 'scheduler')}",
        join("--oidc-token-audience=", worker),
        f"--attempt-deadline={int(args.seconds) + 60}s", *where,
    )
    return [Step(
        ("gcloud", "scheduler", "jobs", "create", "http", job,
         "--headers=Content-Type=application/json", *common),
        check=("gcloud", "scheduler", "jobs", "describe", job, *where),
        if_exists=("gcloud", "scheduler", "jobs", "update", "http", job,
                   "--update-headers=Content-Type=application/json", *common),
    )]


def deploy_plan(args: argparse.Namespace) -> list[Step]:
    """Every step of `brkcoin deploy gcp`, in order."""
    redis_url = join("redis://", REDIS_HOST, ":6379/0")
    worker_timeout = int(args.seconds) + 60
    # iam: rng and hasher refuse calls without an ID token of an invoker (the worker's
    # account). network: they take unauthenticated calls from inside the VPC only.
    by_network = args.backend_access == "network"
    backends = [step for name in ("rng", "hasher")
                for step in _run_deploy(args, name, {"THREADS": "80"}, public=by_network,
                                        vpc=False, concurrency=80, timeout=30,
                                        internal=by_network)]
    id_tokens = {"UPSTREAM_AUTH": "google-id-token"}  # worker -> rng/hasher with ID tokens
    grants = [] if by_network else [_invoker(args, "rng", "worker"),
                                    _invoker(args, "hasher", "worker")]
    return [
        Step(("gcloud", "services", "enable", *APIS, f"--project={args.project}")),
        *_network_steps(args),
        *_redis_steps(args),
        *_account_steps(args),
        *backends,
        *grants,
        *_run_deploy(args, "worker", {"REDIS_URL": redis_url, "RNG_URL": url_of("rng"),
                                      "HASHER_URL": url_of("hasher"), "THREADS": "8",
                                      **({} if by_network else id_tokens)},
                     public=False, vpc=True, concurrency=4, timeout=worker_timeout,
                     egress="all-traffic" if by_network else "private-ranges-only"),
        _invoker(args, "worker", "scheduler"),
        *_run_deploy(args, "webui", {"REDIS_URL": redis_url, "THREADS": "16"},
                     public=True, vpc=True, concurrency=40, timeout=30),
        *_scheduler_steps(args),
    ]


def destroy_plan(args: argparse.Namespace) -> list[Step]:
    """Every step of `brkcoin destroy gcp`: the deploy's resources, newest first."""
    where, project = _where(args), f"--project={args.project}"
    job_where = (f"--location={args.region}", project)
    job = f"{args.prefix}-worker-tick"
    steps = [Step(("gcloud", "scheduler", "jobs", "delete", job, *job_where, "--quiet"),
                  check=("gcloud", "scheduler", "jobs", "describe", job, *job_where),
                  only_if_exists=True)]
    for name in ("webui", "worker", "hasher", "rng"):
        steps.append(Step(("gcloud", "run", "services", "delete", name, *where, "--quiet"),
                          check=("gcloud", "run", "services", "describe", name, *where),
                          only_if_exists=True))
    for role in ROLES:
        email = account(args, role)
        steps.append(Step(("gcloud", "iam", "service-accounts", "delete", email, project,
                           "--quiet"),
                          check=("gcloud", "iam", "service-accounts", "describe", email, project),
                          only_if_exists=True))
    wallet = f"{args.prefix}-wallet"
    steps.append(Step(("gcloud", "redis", "instances", "delete", wallet, *where, "--quiet"),
                      check=("gcloud", "redis", "instances", "describe", wallet, *where),
                      only_if_exists=True))
    if not args.network:
        network, subnet = _names(args)
        steps.append(Step(("gcloud", "compute", "networks", "subnets", "delete", subnet, *where,
                           "--quiet"),
                          check=("gcloud", "compute", "networks", "subnets", "describe", subnet,
                                 *where), only_if_exists=True))
        steps.append(Step(("gcloud", "compute", "networks", "delete", network, project,
                           "--quiet"),
                          check=("gcloud", "compute", "networks", "describe", network, project),
                          only_if_exists=True))
    return steps


def script(steps: list[Step], verb: str) -> str:
    """The plan as a shell script: copy-paste it, or save it and run `bash -e`."""
    lines = [f"# brkcoin {verb} gcp: run from the repository root, e.g. saved as a file "
             "and run with `bash -e FILE`"]
    return "\n".join(lines + [step.shell() for step in steps]) + "\n"


def _call(words: Command, variables: Mapping[str, str],
          quiet: bool = False) -> subprocess.CompletedProcess[str]:
    command = argv(words, variables)
    if not quiet:
        print(f"+ {shlex.join(command)}", flush=True)
    output = subprocess.PIPE if quiet else None
    return subprocess.run(command, cwd=ROOT, stdout=output, stderr=output, text=True,
                          check=False)


def check_gcloud() -> None:
    """gcloud installed and logged in, before anything is changed."""
    require_tool("gcloud", GCLOUD_HINT)
    accounts = subprocess.run(
        ["gcloud", "auth", "list", "--filter=status:ACTIVE", "--format=value(account)"],
        capture_output=True, text=True, check=False)
    if accounts.returncode != 0 or not accounts.stdout.strip():
        raise DeployError("gcloud has no active account: run `gcloud auth login` "
                          "(or use --dry-run to print the commands)")


def execute(steps: list[Step]) -> None:
    """Run the plan with the same semantics as its shell form."""
    check_gcloud()
    variables: dict[str, str] = {}
    for step in steps:
        if step.capture:
            result = _call(step.command, variables, quiet=True)
            if result.returncode != 0 or not result.stdout.strip():
                raise DeployError(f"could not read {step.capture.name}: "
                                  f"{result.stderr.strip()}")
            variables[step.capture.name] = result.stdout.strip()
            continue
        command = step.command
        if step.check:
            exists = _call(step.check, variables, quiet=True).returncode == 0
            if step.only_if_exists and not exists:
                continue
            if exists and not step.only_if_exists:
                if not step.if_exists:
                    continue
                command = step.if_exists
        if _call(command, variables).returncode != 0:
            raise DeployError(f"`{shlex.join(argv(command, variables))}` failed")


def deploy(args: argparse.Namespace) -> int:
    validate(args)
    steps = deploy_plan(args)
    if args.dry_run:
        print(script(steps, "deploy"), end="")
        return 0
    execute(steps)
    return 0


def destroy(args: argparse.Namespace) -> int:
    validate(args)
    steps = destroy_plan(args)
    if args.dry_run:
        print(script(steps, "destroy"), end="")
        return 0
    execute(steps)
    return 0
