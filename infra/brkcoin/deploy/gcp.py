"""`brkcoin deploy gcp`: Cloud Run functions, Memorystore, Cloud Scheduler with OIDC.

Why `gcloud run deploy NAME --source DIR --function TARGET --base-image python312`
rather than `gcloud functions deploy --gen2`: Cloud Run functions are Cloud Run
services, and only `gcloud run deploy` offers Direct VPC egress
(`--network/--subnet/--vpc-egress`) to reach Memorystore without a Serverless
VPC Access connector; it is the form Google documents for new functions.

The plan is gcloud commands (shell.Step): each creation is guarded by a
`describe`, so it can be run again; values only known once a resource exists
(Redis host, service URLs) are variables captured from `describe`. Each
function's settings come from its spec (brkcoin.layout), its scaling too:
--concurrency, --min-instances and --max-instances; the rest of the spec's Scaling
(Knative's windows and panic mode) has no Cloud Run setting, as Cloud Run's
autoscaler keeps its own rules. The fan-out is one
Cloud Scheduler job per worker (PREFIX-worker-tick-1 .. N), each with its own
OIDC token; a deploy with fewer workers deletes the jobs beyond N.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime

from cronsim import CronSim, CronSimError

from brkcoin.deploy import rules
from brkcoin.deploy.common import DeployError, require_tool
from brkcoin.deploy.plan import Operation, Plan, Var
from brkcoin.deploy.shell import Command, Each, Step, Word, join
from brkcoin.layout import FUNCTIONS, ROOT, TICK, Function, url_variable

GCLOUD_HINT = ("install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) and "
               "run `gcloud auth login`, or use --dry-run to print the commands")
APIS = ("run.googleapis.com", "cloudbuild.googleapis.com", "artifactregistry.googleapis.com",
        "compute.googleapis.com", "redis.googleapis.com", "cloudscheduler.googleapis.com")
ROLES = ("rng", "hasher", "worker", "webui", "scheduler")  # one service account each
CRON_FIELD = r"[0-9A-Za-z*/,-]+"
CRON = re.compile(rf"{CRON_FIELD}(?: +{CRON_FIELD}){{4}}")  # unix-cron: five fields
REDIS_HOST = Var("REDIS_HOST")
STALE_JOBS, JOB = Var("STALE_JOBS"), Var("JOB")
OPTION_RULES = {"project": rules.GCP_PROJECT, "region": rules.GCP_REGION,
                "prefix": rules.GCP_PREFIX, "network": rules.GCP_RESOURCE.or_empty(),
                "subnet": rules.GCP_RESOURCE.or_empty(), "base_image": rules.IMAGE}
NOTES = ("run from the repository root; a bash script as printed (save it, `bash -e FILE`)",)


def url_of(service: str) -> Var:
    """The variable holding a deployed service's URL, e.g. WORKER_URL."""
    return Var(url_variable(service))


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
    parser.add_argument("--schedule", default=TICK.cron,
                        help=f"cron schedule of the worker (default: {TICK.cron!r})")
    parser.add_argument("--seconds", type=float, default=TICK.seconds,
                        help=f"mining seconds per tick (default: {TICK.seconds:g})")
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
    if not args.region:
        raise DeployError("--region is required, e.g. --region europe-west1 "
                          "(or set $GOOGLE_CLOUD_REGION)")
    rules.check(args, OPTION_RULES)
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


def _job_where(args: argparse.Namespace) -> tuple[str, str]:
    return (f"--location={args.region}", f"--project={args.project}")


def _names(args: argparse.Namespace) -> tuple[str, str]:
    return (args.network or args.prefix, args.subnet or f"{args.prefix}-{args.region}")


def _network_steps(args: argparse.Namespace) -> list[Step]:
    if args.network:
        return []
    network, subnet = _names(args)
    project = f"--project={args.project}"
    return [
        Step(f"the VPC network {network}, unless it exists",
             ("gcloud", "compute", "networks", "create", network, "--subnet-mode=custom",
              project),
             check=("gcloud", "compute", "networks", "describe", network, project)),
        # Private Google Access: the functions reach Google APIs from the subnet too.
        Step(f"its subnet {subnet} ({args.range}), unless it exists",
             ("gcloud", "compute", "networks", "subnets", "create", subnet,
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
        Step(f"the wallet: Memorystore for Redis {name} (basic, 1 GB), unless it exists",
             ("gcloud", "redis", "instances", "create", name, "--tier=basic", "--size=1",
              "--redis-version=redis_7_2", "--connect-mode=direct-peering",
              f"--network=projects/{args.project}/global/networks/{network}", *_where(args)),
             check=describe),
        Step("read its host", (*describe, "--format=value(host)"), capture=REDIS_HOST),
    ]


def _account_steps(args: argparse.Namespace) -> list[Step]:
    project = f"--project={args.project}"
    return [
        Step(f"the service account of {role}, unless it exists",
             ("gcloud", "iam", "service-accounts", "create", f"{args.prefix}-{role}",
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


def _env(function: Function, extra: Mapping[str, Word]) -> dict[str, Word]:
    """Its settings, the URLs of what it needs, and what this target adds."""
    wiring: dict[str, Word] = {
        url_variable(n): join("redis://", REDIS_HOST, ":6379/0") if n == "redis" else url_of(n)
        for n in function.needs}
    return {**wiring, **function.defaults, **extra}


def _run_deploy(args: argparse.Namespace, function: Function, extra: Mapping[str, Word], *,
                vpc: bool, egress: str = "private-ranges-only", public: bool | None = None,
                internal: bool = False, seconds: float = 0) -> list[Step]:
    name = function.name
    folder = function.folder.relative_to(ROOT).as_posix()
    public = function.public if public is None else public
    command: list[Word] = [
        "gcloud", "run", "deploy", name, f"--source={folder}", f"--function={name}",
        f"--base-image={args.base_image}", *_where(args),
        f"--service-account={account(args, name)}",
        "--allow-unauthenticated" if public else "--no-allow-unauthenticated",
        f"--concurrency={function.concurrency}", f"--timeout={function.timeout_for(seconds)}",
        "--cpu=1", f"--memory={function.memory}Mi",
        f"--min-instances={function.min_instances}", f"--max-instances={function.max_instances}",
        *(["--ingress=internal"] if internal else []), _env_vars(_env(function, extra)),
    ]
    if vpc:
        network, subnet = _names(args)
        # Direct VPC egress: Memorystore's private range (or, with network-private
        # backends, everything, so that calls to them count as internal).
        command += [f"--network={network}", f"--subnet={subnet}", f"--vpc-egress={egress}"]
    url = Step(f"read the URL of {name}", ("gcloud", "run", "services", "describe", name,
                                           *_where(args), "--format=value(status.url)"),
               capture=url_of(name))
    shown = "public" if public else "private"
    return [Step(f"deploy the function {name} from {folder} ({shown})", (*command, "--quiet")),
            url]


def _invoker(args: argparse.Namespace, service: str, role: str) -> Step:
    return Step(f"let the {role} account invoke {service}",
                ("gcloud", "run", "services", "add-iam-policy-binding", service, *_where(args),
                 f"--member=serviceAccount:{account(args, role)}", "--role=roles/run.invoker"))


def _jobs_filter(args: argparse.Namespace, keep: int = 0) -> str:
    """gcloud's --filter for the tick jobs (and the single one older deploys made),
    but for the first `keep`."""
    jobs = f'name~"/jobs/{args.prefix}-worker-tick(-[0-9]+)?$"'
    if not keep:
        return jobs
    kept = "|".join(str(slot) for slot in range(1, keep + 1))
    return f'{jobs} AND NOT name~"/jobs/{args.prefix}-worker-tick-({kept})$"'


def _delete_jobs(args: argparse.Namespace, keep: int, why: str) -> list[Operation]:
    return [
        Step(f"list the worker-tick jobs {why}",
             ("gcloud", "scheduler", "jobs", "list", *_job_where(args),
              f"--filter={_jobs_filter(args, keep)}", "--format=value(name.basename())"),
             capture=STALE_JOBS, may_be_empty=True),
        Each("delete each of them", STALE_JOBS, JOB,
             ("gcloud", "scheduler", "jobs", "delete", JOB, *_job_where(args), "--quiet")),
    ]


def _scheduler_steps(args: argparse.Namespace) -> list[Operation]:
    worker = url_of("worker")
    common: Command = (
        f"--schedule={args.schedule}", "--time-zone=Etc/UTC", join("--uri=", worker, "/"),
        "--http-method=POST", f"--message-body={{\"seconds\": {args.seconds:g}}}",
        f"--oidc-service-account-email={account(args, 'scheduler')}",
        join("--oidc-token-audience=", worker),
        f"--attempt-deadline={int(args.seconds) + 60}s", *_job_where(args),
    )
    steps: list[Operation] = []
    for slot in range(1, args.workers + 1):
        job = f"{args.prefix}-worker-tick-{slot}"
        steps.append(Step(
            f"Cloud Scheduler job {job} ({slot} of {args.workers}): POST the worker "
            f"{{\"seconds\": {args.seconds:g}}} on {args.schedule!r}, with an OIDC token",
            ("gcloud", "scheduler", "jobs", "create", "http", job,
             "--headers=Content-Type=application/json", *common),
            check=("gcloud", "scheduler", "jobs", "describe", job, *_job_where(args)),
            if_exists=("gcloud", "scheduler", "jobs", "update", "http", job,
                       "--update-headers=Content-Type=application/json", *common)))
    return steps + _delete_jobs(args, args.workers,
                                f"beyond the {args.workers} (from a deploy with more workers)")


def _plan(args: argparse.Namespace, verb: str, steps: list[Operation]) -> Plan:
    return Plan(f"brkcoin {verb} gcp (project {args.project}, {args.region})", tuple(steps),
                NOTES, preflight=check_gcloud)


def deploy_plan(args: argparse.Namespace) -> Plan:
    """Every step of `brkcoin deploy gcp`, in order."""
    validate(args)
    # iam: rng and hasher refuse calls without an ID token of an invoker (the worker's
    # account). network: they take unauthenticated calls from inside the VPC only.
    by_network = args.backend_access == "network"
    backends = [step for name in ("rng", "hasher")
                for step in _run_deploy(args, FUNCTIONS[name], {}, vpc=False,
                                        public=by_network or None, internal=by_network)]
    id_tokens: dict[str, Word] = {"UPSTREAM_AUTH": "google-id-token"}  # worker -> rng/hasher
    grants = [] if by_network else [_invoker(args, "rng", "worker"),
                                    _invoker(args, "hasher", "worker")]
    return _plan(args, "deploy", [
        Step("enable the APIs brkcoin uses",
             ("gcloud", "services", "enable", *APIS, f"--project={args.project}")),
        *_network_steps(args),
        *_redis_steps(args),
        *_account_steps(args),
        *backends,
        *grants,
        *_run_deploy(args, FUNCTIONS["worker"], {} if by_network else id_tokens, vpc=True,
                     egress="all-traffic" if by_network else "private-ranges-only",
                     seconds=args.seconds),
        _invoker(args, "worker", "scheduler"),
        *_run_deploy(args, FUNCTIONS["webui"], {}, vpc=True),
        *_scheduler_steps(args),
    ])


def destroy_plan(args: argparse.Namespace) -> Plan:
    """Every step of `brkcoin destroy gcp`: the deploy's resources, newest first."""
    validate(args)
    where, project = _where(args), f"--project={args.project}"
    steps: list[Operation] = [*_delete_jobs(args, 0, "(one per worker)")]
    for name in ("webui", "worker", "hasher", "rng"):
        steps.append(Step(f"delete the function {name}, if it exists",
                          ("gcloud", "run", "services", "delete", name, *where, "--quiet"),
                          check=("gcloud", "run", "services", "describe", name, *where),
                          only_if_exists=True))
    for role in ROLES:
        email = account(args, role)
        steps.append(Step(f"delete the service account of {role}, if it exists",
                          ("gcloud", "iam", "service-accounts", "delete", email, project,
                           "--quiet"),
                          check=("gcloud", "iam", "service-accounts", "describe", email, project),
                          only_if_exists=True))
    wallet = f"{args.prefix}-wallet"
    steps.append(Step(f"delete the wallet {wallet} (all coins), if it exists",
                      ("gcloud", "redis", "instances", "delete", wallet, *where, "--quiet"),
                      check=("gcloud", "redis", "instances", "describe", wallet, *where),
                      only_if_exists=True))
    if not args.network:
        network, subnet = _names(args)
        steps.append(Step(f"delete the subnet {subnet}, if it exists",
                          ("gcloud", "compute", "networks", "subnets", "delete", subnet, *where,
                           "--quiet"),
                          check=("gcloud", "compute", "networks", "subnets", "describe", subnet,
                                 *where), only_if_exists=True))
        steps.append(Step(f"delete the network {network}, if it exists",
                          ("gcloud", "compute", "networks", "delete", network, project,
                           "--quiet"),
                          check=("gcloud", "compute", "networks", "describe", network, project),
                          only_if_exists=True))
    return _plan(args, "destroy", steps)


def check_gcloud() -> None:
    """gcloud installed and logged in, before anything is changed."""
    require_tool("gcloud", GCLOUD_HINT)
    accounts = subprocess.run(
        ["gcloud", "auth", "list", "--filter=status:ACTIVE", "--format=value(account)"],
        capture_output=True, text=True, check=False)
    if accounts.returncode != 0 or not accounts.stdout.strip():
        raise DeployError("gcloud has no active account: run `gcloud auth login` "
                          "(or use --dry-run to print the commands)")
