//! ferry's integration tests: the real binary, real nginx, real curl, on loopback.

mod helpers;

mod admin;
mod api;
mod auth;
mod cli;
mod download;
mod lifecycle;
mod openapi;
mod redis;
mod security;
mod store;
mod ui;
mod webdriver;
