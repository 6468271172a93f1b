-- grain (version): the rtn SQL (tables and views) last applied to this warehouse; one row
create table if not exists warehouse_schema (
    version varchar primary key   -- sql.schema_version(): a digest of sql/ as the applying code had it
);
