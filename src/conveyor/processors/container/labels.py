"""The container kind's words on the console, in English and Simplified Chinese: its name
and its own page, /admin/tasks/run (``run.*``)."""

from __future__ import annotations

LABELS: dict[str, dict[str, str]] = {
    "en": {
        "kind.container": "container",
        "run.title": "Run a container job",
        "run.to_transcode": "Add a transcode task instead",
        "run.link": "Run a container job instead",
        "run.code_note": (
            "Container jobs run code you supply, so only roles with the tasks:run_code "
            "permission may run them: {roles}. The code sees only what its sandbox shows it: "
            "its input and output folders, the environment set here and the secrets granted "
            "to your token, not the worker's files, environment or credentials."
        ),
        "run.job": "Job",
        "run.image": "Image",
        "run.image_placeholder": "e.g. pytorch/pytorch:latest",
        "run.image_hint": (
            "Leave empty to run the command as a local process on a worker without a "
            "container engine."
        ),
        "run.command": "Command",
        "run.command_placeholder": "e.g. python train.py --epochs 3",
        "run.env": "Environment",
        "run.env_placeholder": "NAME=value, one per line",
        "run.env_hint": "Stored with the task: put secrets on the workers, not here.",
        "run.gpus": "GPUs",
        "run.gpus_placeholder": "a count, or ids such as 0,2",
        "run.timeout": "Timeout (seconds)",
        "run.max_attempts": "Attempts",
    },
    "zh-CN": {
        "kind.container": "容器",
        "run.title": "运行容器任务",
        "run.to_transcode": "改为添加转码任务",
        "run.link": "改为运行容器任务",
        "run.code_note": (
            "容器任务运行的是你提供的代码，因此只有拥有 tasks:run_code "
            "权限的角色可以运行：{roles}。代码只能看到沙箱向它展示的内容：它的输入和输出文件夹、这里设置的环境变量，以及授予你的令牌的密钥；看不到工作节点的文件、环境变量或凭据。"
        ),
        "run.job": "任务",
        "run.image": "镜像",
        "run.image_placeholder": "例如 pytorch/pytorch:latest",
        "run.image_hint": "留空则在没有容器引擎的工作节点上以本地进程运行命令。",
        "run.command": "命令",
        "run.command_placeholder": "例如 python train.py --epochs 3",
        "run.env": "环境变量",
        "run.env_placeholder": "NAME=value，每行一个",
        "run.env_hint": "会随任务保存：密钥请放在工作节点上，不要写在这里。",
        "run.gpus": "GPU",
        "run.gpus_placeholder": "数量，或编号如 0,2",
        "run.timeout": "超时（秒）",
        "run.max_attempts": "尝试次数",
    },
}
