//! Route handlers, one module per resource, named by verb (`index`, `show`, `create`,
//! `delete`).

pub mod conversations;
pub mod events;
pub mod export;
pub mod health;
pub mod messages;
pub mod sessions;
pub mod settings;
pub mod turns;
pub mod ui;
pub mod webhooks;
