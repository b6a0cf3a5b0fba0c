"""SVD fine-tuning with the LSA objective and every ablation axis of the paper."""
