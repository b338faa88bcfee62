"""Event sources: each turns an input (files, SQS, Kafka) into batches of decoded records."""
