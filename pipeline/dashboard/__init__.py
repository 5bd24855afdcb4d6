"""The live dashboard (`pipeline dashboard`): server-rendered pages over the pipeline's tables."""
