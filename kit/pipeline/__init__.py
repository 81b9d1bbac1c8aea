"""The top layer: the stage graph and a stage's lifecycle (stage), `kit run` (runner), rerun, sweep,
compare and report. It may import every stage; no stage imports it."""
