"""The query engine: Ray Data scoring, KMeans backends, weighted polling and the strategies.

Public API: ``run_query(QueryRequest) -> QueryResult``, ``kmeans``, ``weighted_polling``,
``num_clusters``, and ``strategies.available()`` / ``strategies.get(name, **params)``.
"""

from paal_ray.query.api import QueryRequest, QueryResult
from paal_ray.query.clustering import KMeansResult, kmeans, kmeans_task
from paal_ray.query.engine import QueryError, run_query
from paal_ray.query.polling import num_clusters, polling_weights, weighted_polling

__all__ = [
    "KMeansResult", "QueryError", "QueryRequest", "QueryResult", "kmeans", "kmeans_task", "num_clusters",
    "polling_weights", "run_query", "weighted_polling",
]
