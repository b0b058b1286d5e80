"""Run Conveyor's tasks on an HPC cluster's compute nodes, scheduled by Slurm (docs/slurm.md).

* ``executor``: ``conveyor worker --executor slurm --partition P``, on a login node:
  claims tasks as any worker does and submits each attempt as a Slurm job;
* ``job``: what that job runs on the compute node (one attempt, the same processors as
  any worker, over the remote-worker protocol with a task-scoped credential);
* ``adapter`` (``cli``, ``rest``): the one small adapter that talks to Slurm;
* ``jobspec``: what is submitted (resources, names, environment), ``states``: what each
  Slurm state means for the attempt, ``records``: the leases kept for adoption;
* ``cluster``: partitions, nodes, GPUs and Conveyor's jobs, for the console.
"""
