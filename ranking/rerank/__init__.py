"""Optional stages on the ranked top N: the LLM reranker (`llm`) and its LoRA tuning
(`llm_tune`)."""
