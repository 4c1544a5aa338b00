//! `run --dev`: the daemon against the built-in sandbox, with no config and no credentials. It
//! creates `./imgsyncd-dev/` with a drop folder per vendor (`drop/kingdee/` feeds the Kingdee
//! vendor `kingdee`, `drop/feishu/` the Feishu lingo vendor `wiki`, `drop/jiandaoyun/` the
//! Jiandaoyun vendor `forms`, which creates a form record per file), a journal and its config.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};
use crate::sandbox::{Sandbox, SandboxOptions};

/// The sandbox's port when it is free (a fixed one keeps the recorded URLs working across runs).
const DEV_ADDR: &str = "127.0.0.1:8787";

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the sandbox on loopback: {0}")]
    Sandbox(#[source] std::io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

pub struct DevSetup {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub config: Config,
    pub sandbox: Sandbox,
}

/// Starts the sandbox (serving on the current runtime) and writes the dev config under `dir`.
pub async fn prepare(dir: &Path) -> Result<DevSetup, DevError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DevError::Io { path, source }
    };
    let dir = std::path::absolute(dir).map_err(io(dir))?;
    let drop_dir = dir.join("drop").join("kingdee");
    let feishu_drop = dir.join("drop").join("feishu");
    let jiandaoyun_drop = dir.join("drop").join("jiandaoyun");
    for folder in [&drop_dir, &feishu_drop, &jiandaoyun_drop] {
        std::fs::create_dir_all(folder).map_err(io(folder))?;
    }
    let options = SandboxOptions::default();
    let (sandbox, serve) = match Sandbox::bind(DEV_ADDR, options.clone()).await {
        Ok(bound) => bound,
        Err(_) => Sandbox::bind("127.0.0.1:0", options.clone())
            .await
            .map_err(DevError::Sandbox)?,
    };
    tokio::spawn(serve);
    let account = &options.kingdee;
    let feishu = &options.feishu;
    let jiandaoyun = &options.jiandaoyun;
    let config_path = dir.join("daemon.yaml");
    let text = format!(
        "# Written by `imgsyncd run --dev`: the daemon against the built-in sandbox.\n\
         journal: {journal}\n\
         workers: 4\n\
         settle: 2s\n\
         rescan: 10m\n\
         vendors:\n\
         \x20 kingdee:\n\
         \x20   kind: kingdee\n\
         \x20   base_url: {base}\n\
         \x20   client_id: \"{client_id}\"\n\
         \x20   client_secret: {client_secret}\n\
         \x20   app_key: {app_key}\n\
         \x20   app_secret: {app_secret}\n\
         \x20   domain: {domain}\n\
         \x20 wiki:\n\
         \x20   kind: feishu\n\
         \x20   base_url: {base}\n\
         \x20   app_id: {app_id}\n\
         \x20   app_secret: {feishu_secret}\n\
         \x20 forms:\n\
         \x20   kind: jiandaoyun\n\
         \x20   base_url: {base}\n\
         \x20   api_key: {jdy_key}\n\
         \x20   app_id: {jdy_app}\n\
         \x20   entry_id: {jdy_entry}\n\
         \x20   create_record:\n\
         \x20     image_widget: _widget_1432728651402\n\
         \x20     fields:\n\
         \x20       _widget_1432728651403: \"{{filename}}\"\n\
         \x20       _widget_1432728651404: \"{{width}}×{{height}} px, {{size}} bytes\"\n\
         \x20       _widget_1432728651405: \"{{sha256}}\"\n\
         watches:\n\
         \x20 - path: {drop}\n\
         \x20   vendor: kingdee\n\
         \x20 - path: {feishu_drop}\n\
         \x20   vendor: wiki\n\
         \x20 - path: {jiandaoyun_drop}\n\
         \x20   vendor: forms\n",
        journal = dir.join("journal.sqlite3").display(),
        base = sandbox.base_url(),
        client_id = account.client_id,
        client_secret = account.client_secret,
        app_key = account.app_key,
        app_secret = account.app_secret,
        domain = account.domain,
        drop = drop_dir.display(),
        app_id = feishu.app_id,
        feishu_secret = feishu.app_secret,
        feishu_drop = feishu_drop.display(),
        jdy_key = jiandaoyun.api_key,
        jdy_app = jiandaoyun.app_id,
        jdy_entry = jiandaoyun.entry_id,
        jiandaoyun_drop = jiandaoyun_drop.display(),
    );
    std::fs::write(&config_path, text).map_err(io(&config_path))?;
    let config = Config::load(&config_path)?;
    Ok(DevSetup {
        dir,
        config_path,
        config,
        sandbox,
    })
}
