"""batchgen: large, resumable, cost-audited batches of okaypic generation jobs."""

__version__ = "0.1.0"
