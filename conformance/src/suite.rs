//! [`Suite`]: what the suite runs against, a client factory with the hooks
//! and resources that select more cases.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use leasehold_core::{LockBackend, LockError};

use crate::fixtures;
use crate::hooks::{Factory, SessionEnder, Skipped, Store};

/// What the suite runs against: a client factory, and optionally fault hooks,
/// child-process support and resources (containers) to drop at the end.
pub struct Suite {
    pub(crate) name: String,
    pub(crate) factory: Factory,
    pub(crate) store: Option<Arc<dyn Store>>,
    pub(crate) child_env: Option<Vec<(String, String)>>,
    pub(crate) session_ender: Option<SessionEnder>,
    resources: Vec<Box<dyn Any + Send>>,
}

impl Suite {
    /// A suite named `name` over clients made by `factory`.
    pub fn new<F, Fut>(name: impl Into<String>, factory: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn LockBackend>, LockError>> + Send + 'static,
    {
        let factory: Factory = Arc::new(move || Box::pin(factory()));
        Suite {
            name: name.into(),
            factory,
            store: None,
            child_env: None,
            session_ender: None,
            resources: Vec::new(),
        }
    }

    /// A suite named `name` over the store `spec` describes, provisioned the
    /// way every leasehold backend's conformance main does it:
    /// `LEASEHOLD_TEST_<STORE>_URL` if set, else a container started from
    /// `spec` ([`fixtures::provision`]); its URL from `url_from_port` (given
    /// the container's port on 127.0.0.1; an external URL is used as it is);
    /// clients from `connect(url)`; then [`Suite::with_provisioned`] (child
    /// processes reach the same store; a container adds the pause and restart
    /// hooks and lives until the run ends). With neither Docker nor a URL,
    /// `Skipped`. More hooks (a session ender) can be added to the result.
    pub async fn provisioned<F, Fut>(
        name: impl Into<String>,
        spec: fixtures::ContainerSpec,
        url_from_port: impl FnOnce(u16) -> String,
        connect: F,
    ) -> Result<Suite, Skipped>
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn LockBackend>, LockError>> + Send + 'static,
    {
        let store = fixtures::provision(&spec).await?;
        let url = store.url(url_from_port);
        let connect_to = url.clone();
        let suite = Suite::new(name, move || connect(connect_to.clone()));
        Ok(suite.with_provisioned(&spec, store, &url))
    }

    /// Enables the fault cases that pause and restart the store.
    pub fn with_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Enables the child-process cases (killed and paused holders): `env` is
    /// what a child process of this test binary needs to reach the same store
    /// through the same factory (e.g. `LEASEHOLD_TEST_REDIS_URL=...`).
    pub fn with_child_env(mut self, env: Vec<(String, String)>) -> Self {
        self.child_env = Some(env);
        self
    }

    /// Enables the cases that end a holder's store session (see
    /// [`SessionEnder`]).
    pub fn with_session_ender<F, Fut>(mut self, end: F) -> Self
    where
        F: Fn(leasehold_core::Lease) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.session_ender = Some(Arc::new(move |lease| Box::pin(end(lease))));
        self
    }

    /// Keeps `resource` (a container) alive until the run ends.
    pub fn keep(mut self, resource: impl Any + Send) -> Self {
        self.resources.push(Box::new(resource));
        self
    }

    /// Wires a provisioned store in: child processes get `url` through the
    /// spec's `LEASEHOLD_TEST_<STORE>_URL` (so their setup connects to the same
    /// store instead of starting a container), and a container adds the pause
    /// and restart hooks and lives until the run ends.
    pub fn with_provisioned(
        self,
        spec: &fixtures::ContainerSpec,
        store: fixtures::Provisioned,
        url: &str,
    ) -> Self {
        let suite = self.with_child_env(vec![(spec.url_env(), url.to_owned())]);
        match store {
            fixtures::Provisioned::External(_) => suite,
            fixtures::Provisioned::Container(container) => {
                suite.with_store(container.clone()).keep(container)
            }
        }
    }

    /// The suite's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}
