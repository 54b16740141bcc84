FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api api
COPY core core
COPY migrations migrations
COPY models models
COPY regscan regscan
COPY scanner scanner
COPY scheduler scheduler
COPY worker worker
RUN pip install --no-cache-dir . && useradd --system regscan
USER regscan
