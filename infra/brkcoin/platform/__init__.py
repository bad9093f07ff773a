"""The local serverless platform that `brkcoin up` and `brkcoin lesson` run.

Split as Knative is (DESIGN.md):
- the data plane: a front door per function (proxy.py) whose decisions, which
  instance and when to give up, are the pure slot-and-line rules of door.py;
- the control plane: supervision and scaling (supervisor.py), the scheduler
  (scheduler.py), and the files `brkcoin status` and `brkcoin scale` read and
  write (runfile.py);
- the processes it starts: functions (processes.py) and the embedded Redis
  (redis_server.py).
"""
