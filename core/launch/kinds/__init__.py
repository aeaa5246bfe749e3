"""Every job kind, typed and registered: `KINDS` maps a kind's name to its `JobKind`. Importing this package
registers them all; a new kind is one module here (its Args dataclass, its runner, what it reads) and one import.

    from core.launch.kinds import SweepArgs
    launch(Job(SweepArgs(model="smollm2-135m-instruct", techniques=("fp32", "nf4"))), "worker")
"""

from core.launch.job import WHERE, Job, JobArgs, JobContext, Launched, Where
from core.launch.kinds.base import KINDS, JobKind, Refused, check, get, kind_of, parse, refusal, register
from core.launch.kinds.hybrids import CascadeArgs, GGUFDraftArgs, ModelCascadeArgs, PromptLookupArgs
from core.launch.kinds.measure import BudgetArgs, MoeArgs, SweepArgs
from core.launch.kinds.prepare import PrepareArgs
from core.launch.kinds.serving import ServeBenchArgs, ServeContextArgs, ServeMemoryArgs
from core.launch.kinds.task import TaskArgs
from core.launch.kinds.train import DistillArgs, LoraArgs, SpeculateArgs

__all__ = [
    "KINDS", "WHERE", "Job", "JobArgs", "JobContext", "JobKind", "Launched", "Refused", "Where", "check", "get",
    "kind_of", "parse", "refusal", "register",
    "BudgetArgs", "CascadeArgs", "DistillArgs", "GGUFDraftArgs", "LoraArgs", "ModelCascadeArgs", "MoeArgs",
    "PrepareArgs", "PromptLookupArgs", "ServeBenchArgs", "ServeContextArgs", "ServeMemoryArgs", "SpeculateArgs",
    "SweepArgs", "TaskArgs",
]
