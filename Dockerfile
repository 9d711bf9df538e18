# The orchestrator's production image: `orchestrator api` and `orchestrator worker`.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY workflows ./workflows
COPY channels ./channels
RUN pip install --no-cache-dir . && useradd --system --no-create-home orchestrator
USER orchestrator
CMD ["orchestrator", "api"]
