from .loop import run
from .solver import SolverTable, build_table
from .steps import full_step, guided_output, solver_update

__all__ = ["SolverTable", "build_table", "full_step", "guided_output", "run", "solver_update"]
