"""The d90 search (the paper's intrinsic dimension): its plan and bisection (plan), its setup
and resolution (setup), running it in a folder (d90), its outputs and curve (outputs, curve),
and running it as a job shared by several workers (job, board)."""
