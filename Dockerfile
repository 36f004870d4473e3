# The server's image for compose.yaml (web and workers run the same code). Not built where it
# was written (no Docker there).
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
CMD ["python", "app.py"]
