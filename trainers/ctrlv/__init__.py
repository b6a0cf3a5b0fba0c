"""Ctrl-V (Luo et al., TMLR 2025), the box-conditioned two-stage baseline of Tables I and II, built on
the LSA trainer's SVD parts, data and loop: render.py (box frames), bbox_generator.py (stage 1),
box2video.py (stage 2: spatio-temporal ControlNet), pipeline.py (two-stage inference), train.py (CLI)."""
